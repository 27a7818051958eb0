//! The launcher's system calls: signals read from a descriptor, a task tree signalled whole,
//! posix_spawn with exact argument and environment arrays, and descriptors that no task
//! inherits.

use crate::rundir;
use std::ffi::{CStr, CString};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A descriptor the loop polls for `signals`, which are blocked and read from it instead of
/// caught: no handler runs, and no byte goes through a pipe, per ended task. Tasks start with
/// none blocked (`spawn_task` sets their mask).
pub(super) fn signal_fd(signals: &[i32]) -> Result<i32, String> {
    // SAFETY: the set is initialised before use; sigprocmask and signalfd only read it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(format!("sigprocmask: {}", std::io::Error::last_os_error()));
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(format!("signalfd: {}", std::io::Error::last_os_error()));
        }
        Ok(fd)
    }
}

/// The signals waiting on `fd` (from `signal_fd`), oldest first.
pub(super) fn take_signals(fd: i32) -> Vec<i32> {
    let mut taken = Vec::new();
    loop {
        // SAFETY: signalfd_siginfo is plain data; read fills whole structs into memory we own.
        let mut infos: [libc::signalfd_siginfo; 16] = unsafe { std::mem::zeroed() };
        let n = unsafe { libc::read(fd, infos.as_mut_ptr().cast(), std::mem::size_of_val(&infos)) };
        if n <= 0 {
            return taken;
        }
        let count = n as usize / std::mem::size_of::<libc::signalfd_siginfo>();
        taken.extend(infos[..count].iter().map(|i| i.ssi_signo as i32));
        if count < infos.len() {
            return taken;
        }
    }
}

/// This process's pid (asked once: getpid is a system call).
pub(super) fn own_pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

pub(super) fn signal_tree(pgid: i32, cgroup_pids: &[i32], signal: i32) {
    let me = own_pid() as i32;
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
    unsafe {
        libc::kill(-pgid, signal);
        for pid in cgroup_pids.iter().filter(|p| **p != me) {
            libc::kill(*pid, signal);
        }
    }
}

/// Starts `file` with exactly `argv` and `envp` in `workdir`, its stdin from /dev/null and its
/// stdout and stderr on the given files, in a session (so a process group) of its own, with every signal at
/// its default and none blocked; its pid. posix_spawn runs no code of ours in the child, so
/// its cost does not grow with this process (a fork would), and the argument and environment
/// arrays are built once here rather than by `Command`'s maps on every launch.
pub(super) fn spawn_task(file: &CStr, argv: &[CString], envp: &[CString], workdir: &CStr, stdout: &File, stderr: &File) -> std::io::Result<i32> {
    let nul_ended = |strings: &[CString]| strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect::<Vec<_>>();
    let (argv, envp) = (nul_ended(argv), nul_ended(envp));
    let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::from_raw_os_error(rc)) };
    // SAFETY: the attribute and file-action objects are initialised before use and destroyed
    // on every path; every pointer handed over (paths, argv, envp, descriptors) outlives the call.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        check(libc::posix_spawn_file_actions_init(&mut actions))?;
        if let Err(e) = check(libc::posix_spawnattr_init(&mut attr)) {
            libc::posix_spawn_file_actions_destroy(&mut actions);
            return Err(e);
        }
        let spawned = (|| {
            check(libc::posix_spawn_file_actions_addopen(&mut actions, 0, c"/dev/null".as_ptr(), libc::O_RDONLY, 0))?;
            check(libc::posix_spawn_file_actions_adddup2(&mut actions, stdout.as_raw_fd(), 1))?;
            check(libc::posix_spawn_file_actions_adddup2(&mut actions, stderr.as_raw_fd(), 2))?;
            check(libc::posix_spawn_file_actions_addchdir_np(&mut actions, workdir.as_ptr()))?;
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigemptyset(&mut none);
            check(libc::posix_spawnattr_setsigdefault(&mut attr, &all))?;
            check(libc::posix_spawnattr_setsigmask(&mut attr, &none))?;
            // A session of its own, so a process group of its own (pgid = pid, what a cancel
            // signals) and no controlling terminal to read or signal, whatever the agent had.
            let flags = libc::POSIX_SPAWN_SETSID | (libc::POSIX_SPAWN_SETSIGDEF | libc::POSIX_SPAWN_SETSIGMASK) as libc::c_short;
            check(libc::posix_spawnattr_setflags(&mut attr, flags as libc::c_short))?;
            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawn(&mut pid, file.as_ptr(), &actions, &attr, argv.as_ptr().cast(), envp.as_ptr().cast()))?;
            Ok(pid)
        })();
        libc::posix_spawnattr_destroy(&mut attr);
        libc::posix_spawn_file_actions_destroy(&mut actions);
        spawned
    }
}

/// Opens and locks an attempt's directory, held until its result is written; None (said on
/// stderr) when a restarted agent holds it or has removed it as abandoned, and will have the
/// server requeue it.
pub(super) fn take_dir(dir: &Path) -> Option<File> {
    let skip = |why: &str| {
        let _ = writeln!(std::io::stderr(), "tidepool-launcher: {} not started: {why}", dir.display());
    };
    let lock = match OpenOptions::new().read(true).custom_flags(libc::O_CLOEXEC | libc::O_DIRECTORY).open(dir) {
        Ok(lock) => lock,
        Err(e) => {
            skip(&e.to_string());
            return None;
        }
    };
    if !rundir::try_flock(&lock, true) {
        skip("locked by another process");
        return None;
    }
    if lock.metadata().map_or(true, |m| std::os::unix::fs::MetadataExt::nlink(&m) == 0) {
        skip("removed as abandoned before it was taken");
        return None;
    }
    Some(lock)
}

/// A descriptor of our own for `fd` (0: stdin, 1: stdout).
/// Marks every descriptor from `first` on close-on-exec: tasks inherit none of what the
/// launcher (or the agent that started it) holds open, pipes to the agent included, so a task
/// can neither write to them nor keep them open after the launcher is gone.
pub(super) fn close_on_exec_from(first: i32) {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<i32> = entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).filter(|fd| *fd >= first).collect();
    for fd in fds {
        // SAFETY: fcntl on a descriptor number has no memory effects; a closed one fails.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

pub(super) fn dup_of(fd: i32) -> Option<File> {
    // SAFETY: dup(2) creates a new descriptor that nobody else owns; File takes it over.
    unsafe {
        let own = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3);
        (own >= 0).then(|| std::os::fd::FromRawFd::from_raw_fd(own))
    }
}

pub(super) fn zeroed_rusage() -> libc::rusage {
    // SAFETY: rusage is a plain C struct of integers; all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

/// One descriptor per running attempt is held open: take the hard limit.
pub(super) fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on this process's own limit, with a struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
