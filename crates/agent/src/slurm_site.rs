//! A Slurm cluster as one more site of the pool: an agent started with `--executor slurm` hands
//! each task it is given to Slurm with `sbatch --parsable`, follows it with `squeue`, ends it
//! with `scancel`, and reports it like any other attempt.
//!
//! Each attempt's directory (on a filesystem the Slurm nodes share) holds the batch script, the
//! Slurm job id (`slurm_job_id`), and the exit code the script writes as it ends
//! (`exit_code`); a job that left `squeue` without one was killed or lost. Flow control is the
//! agent's offer: it registers `--cpus N`, so the scheduler never gives it more than N cores of
//! work, and no more than that is ever queued in Slurm.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use crate::executor::{keep_result, Executor, Recovered, Results};
use tidepool_api::{AttemptOutcome, AttemptRef, Launch, TaskResult};

/// The Slurm job id of an attempt handed to Slurm.
pub const JOB_ID_FILE: &str = "slurm_job_id";
/// The exit code the batch script leaves.
pub const EXIT_FILE: &str = "exit_code";

/// How to reach the Slurm cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlurmSite {
    /// Extra `sbatch` arguments (`--partition=debug`, `--account=chem`).
    pub sbatch_args: Vec<String>,
}

/// Quotes a word for `sh`.
fn quoted(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The batch script of one attempt: the task's environment, its directory, its command, and
/// its exit code written where the agent looks.
pub fn batch_script(launch: &Launch, dir: &Path) -> String {
    let mut s = String::from("#!/bin/sh\n");
    for (k, v) in &launch.env {
        // Slurm sets its own job variables inside the allocation; Tidepool's are kept.
        if k.starts_with("SLURM_") || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let _ = writeln!(s, "export {k}={}", quoted(v));
    }
    let _ = writeln!(s, "cd {} || exit 1", quoted(&launch.workdir));
    match &launch.script {
        Some(_) => {
            let _ = writeln!(s, "{}", quoted(&dir.join("script").display().to_string()));
        }
        None => {
            let words: Vec<String> = launch.command.iter().map(|w| quoted(w)).collect();
            let _ = writeln!(s, "{}", words.join(" "));
        }
    }
    let exit = dir.join(EXIT_FILE).display().to_string();
    let _ = writeln!(s, "code=$?\necho $code > {}.tmp && mv {}.tmp {}\nexit $code", quoted(&exit), quoted(&exit), quoted(&exit));
    s
}

impl SlurmSite {
    /// Submits an attempt; returns its Slurm job id.
    pub fn submit(&self, launch: &Launch, dir: &Path) -> Result<String, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let write = |name: &str, text: &str, mode: u32| -> Result<PathBuf, String> {
            let path = dir.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            std::io::Write::write_all(&mut f, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(path)
        };
        if let Some(script) = &launch.script {
            write("script", script, 0o700)?;
        }
        // Slurm fails a job whose output directory is missing instead of making it. The files
        // are made here, so the log is read back from the very file Slurm then writes into.
        let mut opened = Vec::new();
        for (stream, out) in [("stdout", &launch.stdout_path), ("stderr", &launch.stderr_path)] {
            if let Some(parent) = Path::new(out).parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_NOFOLLOW).open(out);
            opened.push((stream, out.as_str(), file.map_err(|e| format!("{out}: {e}"))?));
        }
        let files: Vec<(&str, &str, &std::fs::File)> = opened.iter().map(|(s, p, f)| (*s, *p, f)).collect();
        let outputs = crate::outputs::dir_of(dir.parent().unwrap_or(dir));
        let _ = crate::outputs::record(&outputs, launch.attempt, &files);
        // Owner-only: the script holds the task's environment, secrets included.
        let batch = write("batch.sh", &batch_script(launch, dir), 0o700)?;
        let a = launch.attempt;
        let mut cmd = Command::new("sbatch");
        cmd.arg("--parsable")
            .arg(format!("--job-name=tidepool-{}-{}", a.job_id, a.index))
            .arg(format!("--output={}", launch.stdout_path))
            .arg(format!("--error={}", launch.stderr_path))
            .arg(format!("--cpus-per-task={}", launch.cpu_millis.div_ceil(1000).max(1)))
            .arg("--export=NONE");
        if launch.mem_bytes > 0 {
            cmd.arg(format!("--mem={}M", launch.mem_bytes.div_ceil(1 << 20)));
        }
        if launch.append_output {
            cmd.arg("--open-mode=append");
        }
        if let Some(s) = launch.time_limit_s {
            cmd.arg(format!("--time={}", s.div_ceil(60).max(1)));
        }
        let out = cmd.args(&self.sbatch_args).arg(&batch).stdin(Stdio::null()).output().map_err(|e| format!("sbatch: {e}"))?;
        if !out.status.success() {
            return Err(format!("sbatch: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        // --parsable prints "ID" or "ID;CLUSTER".
        let id = String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap_or("").to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("sbatch printed no job id: {}", String::from_utf8_lossy(&out.stdout).trim()));
        }
        write(JOB_ID_FILE, &id, 0o600)?;
        Ok(id)
    }

    /// Which of `ids` Slurm still holds (pending, running, completing); `None` when `squeue`
    /// could not be asked (then nothing is taken to have ended).
    pub fn still_queued(&self, ids: &[String]) -> Option<std::collections::HashSet<String>> {
        if ids.is_empty() {
            return Some(Default::default());
        }
        let out = Command::new("squeue")
            .args(["-h", "-o", "%i %t", "-j", &ids.join(",")])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .ok()?;
        if !out.status.success() {
            // squeue refuses a list whose ids all left the queue long ago.
            let err = String::from_utf8_lossy(&out.stderr);
            return err.contains("Invalid job id").then(Default::default);
        }
        Some(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| {
                    let mut parts = l.split_whitespace();
                    let id = parts.next()?;
                    let state = parts.next().unwrap_or("");
                    // Ended states linger in squeue for a while; they count as gone.
                    (!matches!(state, "CD" | "F" | "CA" | "TO" | "NF" | "OOM" | "PR" | "BF" | "DL")).then(|| id.to_string())
                })
                .collect(),
        )
    }

    /// Cancels a Slurm job.
    pub fn cancel(&self, id: &str) {
        let _ = Command::new("scancel").arg(id).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// One attempt in Slurm's hands.
#[derive(Debug, Clone)]
struct InSlurm {
    slurm_job: String,
    started_ms: u64,
    cancelled: bool,
}

/// The Slurm executor of an agent: the attempts it handed to the site, followed until they
/// leave Slurm's queue. It holds no process of its own, so its attempts outlive the agent and
/// are taken back from their directories by the next one.
pub struct SlurmExecutor {
    site: SlurmSite,
    held: std::sync::Mutex<std::collections::HashMap<AttemptRef, InSlurm>>,
}

/// How often Slurm is asked which attempts left its queue.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl SlurmExecutor {
    /// An executor for `site` holding nothing yet.
    pub fn new(site: SlurmSite) -> SlurmExecutor {
        SlurmExecutor { site, held: Default::default() }
    }

    /// An executor for `site` and a thread that asks Slurm every second which attempts left
    /// its queue and sends their results (kept beside them under `run_dir` first) to `results`.
    /// The thread ends with the executor.
    pub fn following(site: SlurmSite, run_dir: std::path::PathBuf, results: Results) -> std::sync::Arc<SlurmExecutor> {
        let executor = std::sync::Arc::new(SlurmExecutor::new(site));
        let weak = std::sync::Arc::downgrade(&executor);
        std::thread::spawn(move || loop {
            std::thread::sleep(FOLLOW_EVERY);
            let Some(executor) = weak.upgrade() else { return };
            for (dir, result) in executor.collect_ended(&run_dir, crate::launcher::now_ms()) {
                keep_result(&dir, &result);
                let _ = results.send(result);
            }
        });
        executor
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<AttemptRef, InSlurm>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `launch` to Slurm from its attempt directory `dir`; Slurm's job id.
    pub fn submit(&self, launch: &Launch, dir: &Path, now_ms: u64) -> Result<String, String> {
        let id = self.site.submit(launch, dir)?;
        self.lock().insert(launch.attempt, InSlurm { slurm_job: id.clone(), started_ms: now_ms, cancelled: false });
        Ok(id)
    }

    /// Takes back an attempt an earlier agent process handed to Slurm from `dir`; false when
    /// `dir` holds no Slurm job.
    pub fn adopt(&self, a: AttemptRef, dir: &Path, now_ms: u64) -> bool {
        let Ok(id) = std::fs::read_to_string(dir.join(JOB_ID_FILE)) else { return false };
        self.lock().entry(a).or_insert_with(|| InSlurm { slurm_job: id.trim().to_string(), started_ms: now_ms, cancelled: false });
        true
    }

    /// Cancels attempt `a` in Slurm; false when it was never handed over (it is to be refused
    /// when it comes).
    pub fn scancel(&self, a: AttemptRef) -> bool {
        let id = self.lock().get_mut(&a).map(|held| {
            held.cancelled = true;
            held.slurm_job.clone()
        });
        match id {
            Some(id) => {
                self.site.cancel(&id);
                true
            }
            None => false,
        }
    }

    /// The attempts in Slurm's hands.
    pub fn held(&self) -> Vec<AttemptRef> {
        self.lock().keys().copied().collect()
    }

    /// Asks Slurm once which attempts left its queue; their results, with their directories
    /// under `run_dir` (`squeue` runs here: call it off the async threads).
    pub fn collect_ended(&self, run_dir: &Path, now_ms: u64) -> Vec<(std::path::PathBuf, TaskResult)> {
        let ids: Vec<String> = self.lock().values().map(|h| h.slurm_job.clone()).collect();
        let Some(queued) = self.site.still_queued(&ids) else { return Vec::new() };
        let mut held = self.lock();
        let gone: Vec<AttemptRef> = held.iter().filter(|(_, h)| !queued.contains(&h.slurm_job)).map(|(a, _)| *a).collect();
        gone.into_iter()
            .filter_map(|a| {
                let h = held.remove(&a)?;
                let dir = crate::rundir::attempt_dir(run_dir, &a);
                let result = ended(a, &dir, h.cancelled, h.started_ms, now_ms);
                Some((dir, result))
            })
            .collect()
    }
}

impl Executor for SlurmExecutor {
    fn start(&self, launch: Launch, dir: &Path) -> Result<(), String> {
        let a = launch.attempt;
        // sbatch from here would run it as this agent's user: refused rather than run as root.
        if let Some(identity) = &launch.run_as {
            return Err(format!("this Slurm site does not run tasks as a project's identity (uid {}) yet", identity.uid));
        }
        let id = self.submit(&launch, dir, crate::launcher::now_ms()).map_err(|e| format!("cannot hand the task to Slurm: {e}"))?;
        tracing::debug!(job = a.job_id, index = a.index, slurm_job = %id, "handed to Slurm");
        Ok(())
    }

    fn cancel(&self, a: AttemptRef, _dir: &Path) -> bool {
        self.scancel(a)
    }

    fn recover(&self, a: AttemptRef, dir: &Path) -> Recovered {
        // Handed to Slurm by an earlier agent process: followed again.
        if self.adopt(a, dir, crate::launcher::now_ms()) {
            Recovered::Running
        } else {
            Recovered::Abandoned
        }
    }

    fn running(&self) -> Vec<AttemptRef> {
        self.held()
    }

    fn forget(&self, _acked: &[AttemptRef]) {}

    fn stop_all(&self) -> bool {
        // Attempts in Slurm run on without the agent and are followed again at its next start.
        false
    }

    fn is_overflow(&self) -> bool {
        true
    }

    fn reuses_dirs(&self) -> bool {
        // Slurm writes files of its own there.
        false
    }

    fn switches_users(&self) -> bool {
        // sbatch submits as the agent's user; Slurm's own --uid is not used yet.
        false
    }
}

/// How an attempt ended, from what its directory holds once Slurm no longer has it.
pub fn ended(a: AttemptRef, dir: &Path, cancelled: bool, started_ms: u64, now_ms: u64) -> TaskResult {
    let code = std::fs::read_to_string(dir.join(EXIT_FILE)).ok().and_then(|t| t.trim().parse::<i32>().ok());
    let outcome = match code {
        _ if cancelled => AttemptOutcome::Cancelled,
        Some(0) => AttemptOutcome::Succeeded,
        Some(_) => AttemptOutcome::Failed,
        // Killed by Slurm (time limit, node failure, scancel from outside) before it could say.
        None => AttemptOutcome::Failed,
    };
    TaskResult {
        attempt: a,
        outcome,
        exit_code: code,
        signal: None,
        started_ms,
        ended_ms: now_ms,
        cpu_ms: 0,
        peak_mem_bytes: 0,
        message: code.is_none().then(|| "the Slurm job ended without an exit code".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_script_quotes_everything_and_leaves_an_exit_code() {
        let launch = Launch {
            env: [("A".to_string(), "x'y".to_string()), ("SLURM_JOB_ID".into(), "9".into()), ("BAD-NAME".into(), "z".into())].into(),
            workdir: "/tmp/a b".into(),
            ..crate::executor::double::launch(2, &["echo", "it's", "$HOME"])
        };
        let s = batch_script(&launch, Path::new("/run/x"));
        assert!(s.contains("export A='x'\\''y'\n"), "{s}");
        assert!(!s.contains("SLURM_JOB_ID") && !s.contains("BAD-NAME"), "{s}");
        assert!(s.contains("cd '/tmp/a b' || exit 1\n"));
        assert!(s.contains("'echo' 'it'\\''s' '$HOME'\n"));
        assert!(s.contains("mv '/run/x/exit_code'.tmp '/run/x/exit_code'"));
        let dir = std::env::temp_dir().join(format!("tidepool-slurm-site-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("sh").arg("-c").arg(s.replace("/run/x", &dir.display().to_string()).replace("/tmp/a b", "/")).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's $HOME\n");
        let r = ended(launch.attempt, &dir, false, 1, 2);
        assert_eq!((r.outcome, r.exit_code), (AttemptOutcome::Succeeded, Some(0)));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(ended(launch.attempt, &dir, false, 1, 2).outcome, AttemptOutcome::Failed);
        assert_eq!(ended(launch.attempt, &dir, true, 1, 2).outcome, AttemptOutcome::Cancelled);
    }
}
