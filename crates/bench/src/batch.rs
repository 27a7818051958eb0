//! `tidepool-bench batch`: arrays of `true` through Tidepool and, in the same run on the same
//! machine, through a single-host Slurm (started by the repo's script), HyperQueue where its
//! Python package installs, and no scheduler at all (the spawn floor).
//!
//! Each system is timed on what its users do: the whole submit command, tasks finished per
//! second while the queue is full, and its control plane's memory.

use crate::line;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SLURM_START: &str = include_str!("../../../bench/slurm/start.sh");
const SLURM_STOP: &str = include_str!("../../../bench/slurm/stop.sh");
const HQ_SCRIPT: &str = include_str!("../../../bench/hq/run.py");

/// Settings of one run.
pub struct BatchBench {
    /// Tasks in the array that is drained (Tidepool) or sampled (Slurm).
    pub tasks: u32,
    /// Seconds over which Slurm's rate is measured.
    pub slurm_window_s: f64,
    /// Tasks given to HyperQueue.
    pub hq_tasks: u32,
    /// Leave Slurm out.
    pub no_slurm: bool,
    /// Leave HyperQueue out.
    pub no_hq: bool,
    /// Tidepool's tasks run as this project uid when the benchmark runs as root (0: as root).
    pub project_uid: u32,
}

/// Whole submission commands timed per system for the median (the first also starts the run).
const SUBMISSIONS: usize = 5;

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs a command to its end; its duration in ms and its stdout, or its stderr as the error.
pub(crate) fn timed(command: &mut Command) -> Result<(f64, String), String> {
    let started = Instant::now();
    let out = command.stdin(Stdio::null()).output().map_err(|e| format!("{command:?}: {e}"))?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        return Err(format!("{command:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok((ms, String::from_utf8_lossy(&out.stdout).to_string()))
}

/// `n` runs of `true` by one worker per core, each spawning and reaping one process at a
/// time: what any scheduler on this machine must pay at least.
fn floor(n: u32) -> f64 {
    let workers = std::thread::available_parallelism().map_or(1, |c| c.get());
    let next = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    // No pre_exec hook, so the standard library uses posix_spawn.
                    let _ = Command::new("true").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    f64::from(n) / started.elapsed().as_secs_f64()
}

/// The middle value.
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Steady rate: tasks per second between 10% and 90% of `total` done, from (seconds, done)
/// samples.
fn steady_rate(samples: &[(f64, u64)], total: u64) -> f64 {
    let at = |share: f64| samples.iter().find(|(_, done)| *done as f64 >= share * total as f64).copied();
    match (at(0.1), at(0.9)) {
        (Some((t0, d0)), Some((t1, d1))) if t1 > t0 => (d1 - d0) as f64 / (t1 - t0),
        _ => samples.last().map_or(0.0, |(t, d)| if *t > 0.0 { *d as f64 / t } else { 0.0 }),
    }
}

pub(crate) struct Tidepool {
    exe: PathBuf,
    child: Child,
    dir: PathBuf,
    url: String,
    /// The token jobs are submitted with: a project's when its tasks run as its uid.
    submitter: Option<String>,
}

impl Drop for Tidepool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The node's launcher outlives its agent and would go on writing in the directory.
        tidepool_agent::rundir::stop_launchers(&self.dir.join("data/agent/run"), Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Tidepool {
    pub(crate) fn start() -> Result<Tidepool, String> {
        let exe = crate::tidepool_exe()?;
        let dir = std::env::temp_dir().join(format!("tidepool-bench-batch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut child = Command::new(&exe)
            .args(["up", "--data-dir", "data", "--listen", "127.0.0.1:0", "--gateway-listen", "127.0.0.1:0"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("tidepool up: {e}"))?;
        let stderr = child.stderr.take().ok_or("tidepool up: no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = l.split("API ").nth(1) {
                    let _ = tx.send(rest.split("/api/v1").next().unwrap_or("").to_string());
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(30)).map_err(|_| "tidepool up did not start in 30 s".to_string())?;
        Ok(Tidepool { exe, child, dir, url, submitter: None })
    }

    /// Its data directory.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// From now on, jobs are submitted by project `bench`, whose tasks run as `uid`.
    pub(crate) fn submit_as_project(&mut self, uid: u32) -> Result<(), String> {
        timed(&mut self.command(&["project", "create", "bench", "--uid", &uid.to_string()]))?;
        let (_, out) = timed(&mut self.command(&["token", "create", "--project", "bench"]))?;
        self.submitter = Some(out.trim().lines().last().unwrap_or_default().to_string());
        Ok(())
    }

    /// A command run by whoever submits the jobs.
    pub(crate) fn as_submitter(&self, args: &[&str]) -> Command {
        let mut c = self.command(args);
        if let Some(token) = &self.submitter {
            c.env("TIDEPOOL_TOKEN", token);
        }
        c
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(args).current_dir(&self.dir).env("TIDEPOOL_URL", &self.url).env("TIDEPOOL_DATA_DIR", self.dir.join("data")).env_remove("TIDEPOOL_TOKEN");
        c
    }

    fn submit(&self, n: u32) -> Result<(f64, String), String> {
        // No output files, as with Slurm's -o /dev/null.
        let (ms, out) = timed(&mut self.as_submitter(&["submit", "--array", &format!("0-{}", n - 1), "-o", "/dev/null", "-e", "/dev/null", "--", "true"]))?;
        Ok((ms, out.trim().to_string()))
    }

    /// Times one more submission of `n` tasks that never runs (every node is drained, as a held
    /// job in Slurm), then cancels it.
    fn submit_held(&self, n: u32) -> Result<f64, String> {
        let (ms, job) = self.submit(n)?;
        let _ = timed(&mut self.command(&["cancel", &job]));
        Ok(ms)
    }

    /// Drains every node, so that later submissions are timed without their tasks running.
    fn drain_every_node(&self) -> Result<(), String> {
        let (_, listing) = timed(&mut self.command(&["nodes"]))?;
        for name in listing.lines().skip(1).filter_map(|l| l.split_whitespace().next()) {
            timed(&mut self.command(&["drain", name]))?;
        }
        Ok(())
    }

    /// Tasks that ended, read through the API.
    pub(crate) async fn ended(&self, client: &reqwest::Client, token: &str, job: &str) -> Result<u64, String> {
        let v: Value = client
            .get(format!("{}/api/v1/jobs/{job}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let count = |k: &str| v["counts"][k].as_u64().unwrap_or(0);
        Ok(count("succeeded") + count("failed") + count("cancelled") + count("timeout"))
    }
}

async fn run_tidepool(n: u32, project_uid: u32, report: &mut BTreeMap<String, Value>) -> Result<(), String> {
    let mut tp = Tidepool::start()?;
    // SAFETY: geteuid only reads this process's credentials.
    let me = unsafe { libc::geteuid() };
    let tasks_uid = if project_uid != 0 && me == 0 { project_uid } else { me };
    if tasks_uid != me {
        tp.submit_as_project(tasks_uid)?;
    }
    report.insert("tasks_uid".into(), json!(tasks_uid));
    let token = std::fs::read_to_string(tp.dir.join("data/admin.token")).map_err(|e| e.to_string())?;
    let token = token.trim();
    let client = reqwest::Client::new();
    let (submit_ms, job) = tp.submit(n)?;
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut peak_rss: f64 = 0.0;
    let deadline = Duration::from_secs(3600);
    loop {
        let done = tp.ended(&client, token, &job).await?;
        samples.push((started.elapsed().as_secs_f64(), done));
        peak_rss = peak_rss.max(rss_mb(tp.child.id()));
        if done >= u64::from(n) || started.elapsed() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain_s = started.elapsed().as_secs_f64();
    // The first submission of a run is also the server's first write; more give a median.
    let mut submits = vec![submit_ms];
    tp.drain_every_node()?;
    for _ in 1..SUBMISSIONS {
        submits.push(tp.submit_held(n)?);
    }
    let (submit_1m_ms, big) = tp.submit(1_000_000)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_1m = rss_mb(tp.child.id());
    let _ = timed(&mut tp.command(&["cancel", &big]));
    report.insert("submit_100k_ms".into(), json!(median(&mut submits)));
    report.insert("submit_100k_first_ms".into(), json!(submit_ms));
    report.insert("submit_1m_ms".into(), json!(submit_1m_ms));
    report.insert("drain_100k_s".into(), json!(drain_s));
    report.insert("tasks".into(), json!(n));
    report.insert("tasks_per_s".into(), json!(steady_rate(&samples, u64::from(n))));
    report.insert("server_rss_mb".into(), json!(peak_rss.max(rss_1m)));
    Ok(())
}

fn write_script(dir: &Path, name: &str, text: &str) -> Result<PathBuf, String> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Tasks of a Slurm array that ended: the array size minus what `squeue` still shows (the
/// pending rest is one line `ID_[A-B]`; running tasks one line each).
fn slurm_ended(conf: &Path, job: &str, n: u64) -> Result<u64, String> {
    let (_, out) = timed(Command::new("squeue").env("SLURM_CONF", conf).args(["-h", "-j", job, "-o", "%i"]))?;
    let mut left = 0u64;
    for l in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match l.split_once("_[") {
            Some((_, range)) => {
                let range = range.trim_end_matches(']').split('%').next().unwrap_or("");
                for part in range.split(',') {
                    let (a, b) = part.split_once('-').unwrap_or((part, part));
                    if let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) {
                        left += b.saturating_sub(a) + 1;
                    }
                }
            }
            None => left += 1,
        }
    }
    Ok(n.saturating_sub(left))
}

fn run_slurm(n: u32, window_s: f64, report: &mut BTreeMap<String, Value>) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("tidepool-bench-slurm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let start = write_script(&dir, "start.sh", SLURM_START)?;
    let stop = write_script(&dir, "stop.sh", SLURM_STOP)?;
    let state = dir.join("slurm");
    timed(Command::new("bash").arg(&start).arg(&state))?;
    let outcome = (|| {
        let conf = state.join("slurm.conf");
        let sbatch = |size: u32| {
            timed(Command::new("sbatch").env("SLURM_CONF", &conf).current_dir(&dir).args([
                "--parsable",
                &format!("--array=0-{}", size - 1),
                "-o",
                "/dev/null",
                "--wrap",
                "true",
            ]))
        };
        let (submit_ms, job) = sbatch(n)?;
        let job = job.trim().split(';').next().unwrap_or("").to_string();
        // The window starts once the first tasks ended, so start-up is not counted.
        let ready = Instant::now();
        while slurm_ended(&conf, &job, u64::from(n))? == 0 && ready.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(200));
        }
        let (t0, d0) = (Instant::now(), slurm_ended(&conf, &job, u64::from(n))?);
        std::thread::sleep(Duration::from_secs_f64(window_s));
        let d1 = slurm_ended(&conf, &job, u64::from(n))?;
        let rate = (d1 - d0) as f64 / t0.elapsed().as_secs_f64();
        let ctld_pid: u32 = std::fs::read_to_string(state.join("slurmctld.pid")).ok().and_then(|p| p.trim().parse().ok()).unwrap_or(0);
        let rss = rss_mb(ctld_pid);
        let _ = timed(Command::new("scancel").env("SLURM_CONF", &conf).arg(&job));
        // More, held so they never run, for the median (as for Tidepool).
        let mut submits = vec![submit_ms];
        for _ in 1..SUBMISSIONS {
            let (ms, held) = timed(Command::new("sbatch").env("SLURM_CONF", &conf).current_dir(&dir).args([
                "--parsable",
                "--hold",
                &format!("--array=0-{}", n - 1),
                "-o",
                "/dev/null",
                "--wrap",
                "true",
            ]))?;
            submits.push(ms);
            let _ = timed(Command::new("scancel").env("SLURM_CONF", &conf).arg(held.trim().split(';').next().unwrap_or("")));
        }
        let (submit_1m_ms, big) = sbatch(1_000_000)?;
        let rss_1m = rss_mb(ctld_pid);
        let _ = timed(Command::new("scancel").env("SLURM_CONF", &conf).arg(big.trim()));
        report.insert("slurm_submit_100k_ms".into(), json!(median(&mut submits)));
        report.insert("slurm_submit_100k_first_ms".into(), json!(submit_ms));
        report.insert("slurm_submit_1m_ms".into(), json!(submit_1m_ms));
        report.insert("slurm_tasks_per_s".into(), json!(rate));
        report.insert("slurm_window_s".into(), json!(window_s));
        report.insert("slurm_drain_100k_s".into(), json!(if rate > 0.0 { f64::from(n) / rate } else { f64::INFINITY }));
        report.insert("slurm_server_rss_mb".into(), json!(rss.max(rss_1m)));
        Ok::<(), String>(())
    })();
    let _ = timed(Command::new("bash").arg(&stop).arg(&state));
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn run_hq(n: u32, report: &mut BTreeMap<String, Value>) -> Result<(), String> {
    let has = || Command::new("python3").args(["-c", "import hyperqueue"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !has() {
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--root-user-action=ignore", "hyperqueue"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !has() {
            return Err("the hyperqueue Python package does not install here".into());
        }
    }
    let dir = std::env::temp_dir().join(format!("tidepool-bench-hq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let script = write_script(&dir, "run.py", HQ_SCRIPT)?;
    let outcome = timed(Command::new("python3").arg(&script).arg(n.to_string()).arg(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    let (_, out) = outcome?;
    let v: Value = serde_json::from_str(out.trim().lines().last().unwrap_or("")).map_err(|e| format!("hyperqueue run: {e}: {out}"))?;
    report.insert("hq_tasks".into(), json!(n));
    report.insert(format!("hq_submit_{}k_ms", n / 1000), v["submit_ms"].clone());
    report.insert("hq_tasks_per_s".into(), v["tasks_per_s"].clone());
    report.insert("hq_server_rss_mb".into(), v["rss_mb"].clone());
    Ok(())
}

/// Runs the benchmark and prints a table or one JSON object.
pub async fn run(json_out: bool, settings: BatchBench) -> Result<u8, String> {
    let mut report: BTreeMap<String, Value> = BTreeMap::new();
    // The floor is measured just before and just after Tidepool's drain and averaged: this
    // machine's speed drifts over a minute by more than the difference being measured.
    let floor_n = settings.tasks.min(20_000);
    let floor_before = floor(floor_n);
    run_tidepool(settings.tasks, settings.project_uid, &mut report).await?;
    let floor_after = floor(floor_n);
    report.insert("floor_tasks_per_s_before".into(), json!(floor_before));
    report.insert("floor_tasks_per_s_after".into(), json!(floor_after));
    report.insert("floor_tasks_per_s".into(), json!((floor_before + floor_after) / 2.0));
    let mut notes = Vec::new();
    if settings.no_slurm {
        notes.push("Slurm: left out (--no-slurm)".to_string());
    } else if let Err(e) = run_slurm(settings.tasks, settings.slurm_window_s, &mut report) {
        notes.push(format!("Slurm: not measured: {e}"));
    }
    if settings.no_hq {
        notes.push("HyperQueue: left out (--no-hq)".to_string());
    } else if let Err(e) = run_hq(settings.hq_tasks, &mut report) {
        notes.push(format!("HyperQueue: not measured: {e}"));
    }
    let get = |report: &BTreeMap<String, Value>, k: &str| report.get(k).and_then(Value::as_f64);
    let ours = get(&report, "tasks_per_s");
    if let (Some(ours), Some(theirs)) = (ours, get(&report, "slurm_tasks_per_s")) {
        report.insert("tasks_per_s_vs_slurm".into(), json!(ours / theirs.max(1e-9)));
    }
    if let (Some(ours), Some(floor)) = (ours, get(&report, "floor_tasks_per_s")) {
        report.insert("tasks_per_s_vs_floor".into(), json!(ours / floor.max(1e-9)));
    }
    let g = |k: &str| get(&report, k);
    if json_out {
        line(&serde_json::to_string(&report).map_err(|e| e.to_string())?);
        return Ok(0);
    }
    let cell = |k: &str| g(k).map_or("-".to_string(), |v| if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") });
    line(&format!(
        "arrays of `true`, {} tasks, on {} cores; Tidepool's tasks run as uid {}",
        settings.tasks,
        std::thread::available_parallelism().map_or(1, |c| c.get()),
        g("tasks_uid").unwrap_or(0.0)
    ));
    line(&format!("{:<38} {:>12} {:>12} {:>12} {:>12}", "", "tidepool", "slurm", "hyperqueue", "no scheduler"));
    let hq_submit = format!("hq_submit_{}k_ms", settings.hq_tasks / 1000);
    // The keys keep the names of the default run (100,000 tasks); the labels say what ran.
    let n = settings.tasks;
    let rows: [(String, &str, &str, &str, &str); 5] = [
        (format!("submit {n} tasks, median of {SUBMISSIONS} (ms)"), "submit_100k_ms", "slurm_submit_100k_ms", "", ""),
        ("submit 1000000 tasks (ms)".into(), "submit_1m_ms", "slurm_submit_1m_ms", "", ""),
        ("tasks finished per second".into(), "tasks_per_s", "slurm_tasks_per_s", "hq_tasks_per_s", "floor_tasks_per_s"),
        (format!("drain {n} tasks (s)"), "drain_100k_s", "slurm_drain_100k_s", "", ""),
        ("control plane RSS (MB)".into(), "server_rss_mb", "slurm_server_rss_mb", "hq_server_rss_mb", ""),
    ];
    for (label, ours, slurm, hq, floor) in rows {
        line(&format!("{label:<38} {:>12} {:>12} {:>12} {:>12}", cell(ours), cell(slurm), cell(hq), cell(floor)));
    }
    line(&format!("hyperqueue: {} tasks, submission {} ms", settings.hq_tasks, cell(&hq_submit)));
    if let Some(r) = g("tasks_per_s_vs_slurm") {
        line(&format!("tasks per second: {r:.1}x Slurm's (goal 100x)"));
    }
    if let Some(r) = g("tasks_per_s_vs_floor") {
        line(&format!("tasks per second: {r:.2} of the no-scheduler floor (goal 0.5)"));
    }
    if g("slurm_tasks_per_s").is_some() {
        line(&format!("Slurm's rate is measured over {} s of its 100k array (it would take hours to drain)", settings.slurm_window_s));
    }
    for n in notes {
        line(&n);
    }
    Ok(0)
}
