//! The per-attempt supervisor: `tidepool __supervise DIR`. Synchronous and small on purpose:
//! it forks the task from a tiny process and outlives the agent.

use crate::rundir::{self, SupervisorSpec};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tidepool_api::TaskResult;

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Runs one attempt described in `dir`; returns the supervisor's exit code.
pub fn run(dir: &Path) -> i32 {
    match supervise(dir) {
        Ok(()) => 0,
        Err(message) => {
            let _ = std::fs::write(dir.join("supervisor.err"), &message);
            1
        }
    }
}

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a plain C struct we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        set
    }
}

fn signal_tree(pgid: i32, cgroup_pids: &[i32], signal: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
    unsafe {
        libc::kill(-pgid, signal);
        for pid in cgroup_pids {
            libc::kill(*pid, signal);
        }
    }
}

fn open_output(path: &str) -> Result<File, String> {
    if let Some(parent) = Path::new(path).parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| format!("cannot open {path}: {e}"))
}

fn supervise(dir: &Path) -> Result<(), String> {
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(dir.join(rundir::LOCK_FILE))
        .map_err(|e| format!("lock: {e}"))?;
    // SAFETY: flock on our own descriptor; held until this process exits.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err("another supervisor holds this attempt".into());
    }
    if rundir::read_result(dir).is_some() {
        return Ok(());
    }
    std::fs::write(dir.join(rundir::PID_FILE), std::process::id().to_string())
        .map_err(|e| format!("pid: {e}"))?;
    let spec: SupervisorSpec = serde_json::from_slice(
        &std::fs::read(dir.join(rundir::SPEC_FILE)).map_err(|e| format!("spec: {e}"))?,
    )
    .map_err(|e| format!("spec: {e}"))?;
    let launch = &spec.launch;
    let a = launch.attempt;
    let cgroup_name = format!("{}.{}.{}.{}", a.job_id, a.index, a.attempt, std::process::id());

    // SAFETY: prctl and sigprocmask change only this process's own settings.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        let set = sigset(&[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }

    let mut result = TaskResult {
        attempt: a,
        outcome: "failed".into(),
        exit_code: None,
        signal: None,
        started_ms: now_ms(),
        ended_ms: 0,
        cpu_ms: 0,
        peak_mem_bytes: 0,
        message: None,
    };

    let cgroup_ok = spec.cgroup.create(&cgroup_name, launch.mem_bytes).is_ok();
    let procs_files: Vec<File> = if cgroup_ok {
        spec.cgroup
            .task_dirs(&cgroup_name)
            .iter()
            .filter_map(|d| OpenOptions::new().write(true).open(d.join("cgroup.procs")).ok())
            .collect()
    } else {
        Vec::new()
    };

    let spawned = (|| -> Result<std::process::Child, String> {
        let stdout = open_output(&launch.stdout_path)?;
        let stderr = if launch.stderr_path == launch.stdout_path {
            stdout.try_clone().map_err(|e| e.to_string())?
        } else {
            open_output(&launch.stderr_path)?
        };
        let (program, args): (String, Vec<String>) = match &launch.script {
            Some(script) => {
                let path = dir.join("script");
                std::fs::write(&path, script).map_err(|e| format!("script: {e}"))?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| format!("script: {e}"))?;
                (path.display().to_string(), vec![])
            }
            None => (launch.command[0].clone(), launch.command[1..].to_vec()),
        };
        let mut env = launch.env.clone();
        let path = env.get("PATH").cloned().unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        if let Some(bin) = &spec.bin_dir {
            env.insert("PATH".into(), format!("{bin}:{path}"));
        } else {
            env.insert("PATH".into(), path);
        }
        let mut cmd = Command::new(&program);
        cmd.args(&args)
            .env_clear()
            .envs(&env)
            .current_dir(&launch.workdir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        let fds: Vec<i32> = procs_files.iter().map(|f| f.as_raw_fd()).collect();
        {
            // SAFETY: between fork and exec this only fills a stack buffer and calls
            // sigprocmask(2), write(2) and getpid(2), all async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    // The supervisor blocks the signals it waits for; the task must not inherit
                    // that mask, or it could never be stopped politely.
                    let mut empty: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut empty);
                    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                    let mut buf = [0u8; 16];
                    let mut n = libc::getpid() as u32;
                    let mut i = buf.len();
                    loop {
                        i -= 1;
                        buf[i] = b'0' + (n % 10) as u8;
                        n /= 10;
                        if n == 0 {
                            break;
                        }
                    }
                    for fd in &fds {
                        libc::write(*fd, buf[i..].as_ptr().cast(), buf.len() - i);
                    }
                    Ok(())
                });
            }
        }
        cmd.spawn().map_err(|e| format!("cannot start {program}: {e}"))
    })();
    drop(procs_files);

    let child = match spawned {
        Ok(child) => child,
        Err(message) => {
            let _ = writeln!(
                OpenOptions::new().create(true).append(true).open(&launch.stderr_path).map_err(|e| e.to_string())?,
                "tidepool: {message}"
            );
            result.exit_code = Some(127);
            result.message = Some(message);
            result.ended_ms = now_ms();
            spec.cgroup.remove(&cgroup_name);
            return rundir::write_result(dir, &result).map_err(|e| format!("result: {e}"));
        }
    };
    let pgid = child.id() as i32;
    result.started_ms = now_ms();
    let started = Instant::now();
    let deadline = launch.time_limit_s.map(|s| started + Duration::from_secs(s));
    let mut kill_at: Option<Instant> = None;
    let mut cancelled = false;
    let mut timed_out = false;
    let grace = Duration::from_secs(spec.kill_grace_s);
    let wait_set = sigset(&[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
    let mut status: Option<i32> = None;
    let mut rusage_children: libc::rusage;
    while status.is_none() {
        // Reap whatever has ended; only the task's own exit ends the wait.
        loop {
            let mut st = 0;
            // SAFETY: waitpid on our own children with a status we own.
            let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == pgid {
                status = Some(st);
            }
        }
        if status.is_some() {
            break;
        }
        let now = Instant::now();
        if kill_at.is_some_and(|at| now >= at) {
            signal_tree(pgid, &spec.cgroup.pids(&cgroup_name), libc::SIGKILL);
            kill_at = Some(now + Duration::from_secs(1));
        }
        if deadline.is_some_and(|d| now >= d) && !timed_out && !cancelled {
            timed_out = true;
            signal_tree(pgid, &spec.cgroup.pids(&cgroup_name), libc::SIGTERM);
            kill_at = Some(now + grace);
        }
        let next = [deadline.filter(|_| !timed_out), kill_at]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(3600))
            .max(Duration::from_millis(1));
        let ts = libc::timespec { tv_sec: next.as_secs() as i64, tv_nsec: i64::from(next.subsec_nanos()) };
        // SAFETY: sigtimedwait fills a siginfo we own; the set was built above.
        let sig = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::sigtimedwait(&wait_set, &mut info, &ts)
        };
        if (sig == libc::SIGTERM || sig == libc::SIGINT || sig == libc::SIGHUP) && !cancelled && !timed_out {
            cancelled = true;
            signal_tree(pgid, &spec.cgroup.pids(&cgroup_name), libc::SIGTERM);
            kill_at = Some(Instant::now() + grace);
        }
    }
    // The task's leader is gone: end whatever it left behind, as Slurm does at a job's end.
    for _ in 0..50 {
        let left = spec.cgroup.pids(&cgroup_name);
        signal_tree(pgid, &left, libc::SIGKILL);
        loop {
            let mut st = 0;
            // SAFETY: as above.
            if unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) } <= 0 {
                break;
            }
        }
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    result.ended_ms = now_ms();
    // SAFETY: getrusage fills a struct we own.
    unsafe {
        rusage_children = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut rusage_children);
    }
    let tv_ms = |tv: libc::timeval| tv.tv_sec as u64 * 1000 + tv.tv_usec as u64 / 1000;
    let (cpu_ms, peak) = match spec.cgroup.usage(&cgroup_name).filter(|_| cgroup_ok) {
        Some(u) => u,
        None => (
            tv_ms(rusage_children.ru_utime) + tv_ms(rusage_children.ru_stime),
            rusage_children.ru_maxrss as u64 * 1024,
        ),
    };
    result.cpu_ms = cpu_ms;
    result.peak_mem_bytes = peak;
    spec.cgroup.remove(&cgroup_name);
    let st = status.unwrap_or(0);
    if libc::WIFEXITED(st) {
        result.exit_code = Some(libc::WEXITSTATUS(st));
    } else if libc::WIFSIGNALED(st) {
        result.signal = Some(libc::WTERMSIG(st));
    }
    result.outcome = if cancelled {
        "cancelled"
    } else if timed_out {
        "timeout"
    } else if result.exit_code == Some(0) {
        "succeeded"
    } else {
        "failed"
    }
    .into();
    if launch.discard_empty_output {
        for p in [&launch.stdout_path, &launch.stderr_path] {
            if std::fs::metadata(p).is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    rundir::write_result(dir, &result).map_err(|e| format!("result: {e}"))
}
