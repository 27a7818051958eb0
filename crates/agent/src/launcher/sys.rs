//! The launcher's system calls: signals read from a descriptor, a task tree signalled whole,
//! posix_spawn with exact argument and environment arrays, and descriptors that no task
//! inherits.

use crate::rundir;
use std::ffi::{CStr, CString};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A descriptor the loop polls for `signals`, which are blocked and read from it instead of
/// caught: no handler runs, and no byte goes through a pipe, per ended task. Tasks start with
/// none blocked (`spawn_task` sets their mask).
pub(super) fn signal_fd(signals: &[i32]) -> Result<i32, String> {
    let set = signal_set(signals);
    // SAFETY: sigprocmask and signalfd only read the initialised set.
    unsafe {
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

/// The set holding `signals`.
pub(super) fn signal_set(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set before sigaddset reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        set
    }
}

/// Makes `command`'s process start with `signals` blocked: one sent before it reads them from
/// its descriptor waits for it there, instead of ending it by their default action.
pub(super) fn start_with_blocked(command: &mut std::process::Command, signals: &[i32]) {
    use std::os::unix::process::CommandExt;
    let set = signal_set(signals);
    // SAFETY: between fork and exec the closure makes one async-signal-safe call with a set
    // built before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
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
        // Never a group of 0 or 1 (the caller's own, or every process).
        if pgid > 1 {
            libc::kill(-pgid, signal);
        }
        for pid in cgroup_pids.iter().filter(|p| **p != me) {
            libc::kill(*pid, signal);
        }
    }
}

/// Sends a task its `--signal` ahead of its time limit: to the batch shell alone (`B:`), or to
/// what a script started and not the shell (whose default would be to die of it), or to the
/// whole of a command.
pub(super) fn warn_ahead_of_limit(leader: i32, cgroup_pids: &[i32], warn: tidepool_api::WarnSignal, script: bool) {
    let me = own_pid() as i32;
    // SAFETY: kill(2) sends a signal; no memory is touched.
    let send = |pid: i32| unsafe { libc::kill(pid, warn.signal) };
    if warn.batch_only {
        send(leader);
        return;
    }
    if !script {
        signal_tree(leader, cgroup_pids, warn.signal);
        return;
    }
    let members: Vec<i32> = if cgroup_pids.is_empty() { process_group_members(leader) } else { cgroup_pids.to_vec() };
    for pid in members.into_iter().filter(|p| *p != leader && *p != me) {
        send(pid);
    }
}

/// The processes of process group `pgid`, read from /proc (where no cgroup lists them).
fn process_group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // Field 5 of stat, after the parenthesised command name, is the process group.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(2).and_then(|g| g.parse::<i32>().ok())))
                == Some(pgid)
        })
        .collect()
}

/// The pointers of `strings`, ended by a null one, as execve and posix_spawn take them.
fn nul_ended(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
}

/// Starts `file` with exactly `argv` and `envp` in `workdir`, its stdin from /dev/null and its
/// stdout and stderr on the given files, in a session (so a process group) of its own, with every signal at
/// its default and none blocked; its pid. posix_spawn runs no code of ours in the child, so
/// its cost does not grow with this process (a fork would), and the argument and environment
/// arrays are built once here rather than by `Command`'s maps on every launch.
pub(super) fn spawn_task(file: &CStr, argv: &[CString], envp: &[CString], workdir: &CStr, stdout: &File, stderr: &File) -> std::io::Result<i32> {
    spawn_passing(file, argv, envp, workdir, None, stdout, stderr)
}

/// The descriptor a process started by [`spawn_passing`] finds what it was handed on (the
/// first after stdio, which OCI runtimes pass on with `--preserve-fds 1`).
pub(super) const PASSED_FD: RawFd = 3;

/// [`spawn_task`], handing over `passed` as descriptor 3 where given.
pub(super) fn spawn_passing(
    file: &CStr,
    argv: &[CString],
    envp: &[CString],
    workdir: &CStr,
    passed: Option<RawFd>,
    stdout: &File,
    stderr: &File,
) -> std::io::Result<i32> {
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
            if let Some(fd) = passed {
                check(libc::posix_spawn_file_actions_adddup2(&mut actions, fd, PASSED_FD))?;
            }
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

/// Runs `f` with the file-system identity of `run_as` (fsuid, fsgid and groups), so that what
/// it opens or makes is checked, and owned, as that identity's would be; the launcher's own
/// comes back after. The launcher is one thread: nothing else opens a file meanwhile.
pub(super) fn with_fs_identity<T>(run_as: &tidepool_api::RunAs, f: impl FnOnce() -> T) -> Result<T, String> {
    // SAFETY: getgroups, setgroups, setfsuid and setfsgid read and write only the arrays we
    // own, and change only this (single-threaded) process's credentials, which are restored.
    unsafe {
        let n = libc::getgroups(0, std::ptr::null_mut());
        let mut own = vec![0 as libc::gid_t; n.max(0) as usize];
        if n > 0 && libc::getgroups(n, own.as_mut_ptr()) < 0 {
            return Err(format!("getgroups: {}", std::io::Error::last_os_error()));
        }
        if libc::setgroups(run_as.groups.len(), run_as.groups.as_ptr()) != 0 {
            return Err(format!("cannot take groups {:?}: {}", run_as.groups, std::io::Error::last_os_error()));
        }
        let old_gid = libc::setfsgid(run_as.gid);
        let old_uid = libc::setfsuid(run_as.uid);
        // setfsuid reports the old value whether or not it worked: ask again to know.
        let took = libc::setfsuid(run_as.uid) as u32 == run_as.uid && libc::setfsgid(run_as.gid) as u32 == run_as.gid;
        let out = took.then(f);
        libc::setfsuid(old_uid as libc::uid_t);
        libc::setfsgid(old_gid as libc::gid_t);
        libc::setgroups(own.len(), own.as_ptr());
        out.ok_or_else(|| format!("cannot act as uid {} gid {}: this node's launcher is not root", run_as.uid, run_as.gid))
    }
}

/// What the child of `spawn_task_as` needs, prepared before it runs, and where it says why it
/// failed (it shares the launcher's memory until it execs).
struct ChildPlan {
    file: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    workdir: *const libc::c_char,
    groups: *const libc::gid_t,
    n_groups: usize,
    uid: libc::uid_t,
    gid: libc::gid_t,
    out_fd: i32,
    err_fd: i32,
    /// The step that failed (0: none) and its errno.
    failed: [i32; 2],
}

/// The child of `spawn_task_as`: only raw system calls on the plan's memory, ending in execve
/// or _exit. Raw calls for the identity, since it shares the launcher's memory and libc's
/// wrappers would consult (and may coordinate) the launcher's threads.
extern "C" fn become_task(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildPlan` the launcher keeps alive, untouched, until this child
    // has exec'd or exited (CLONE_VFORK).
    unsafe {
        let plan = &mut *arg.cast::<ChildPlan>();
        let fail = |plan: &mut ChildPlan, step: i32| -> libc::c_int {
            plan.failed = [step, *libc::__errno_location()];
            libc::syscall(libc::SYS_exit_group, 127);
            127
        };
        for signal in 1..libc::SIGRTMAX() {
            libc::signal(signal, libc::SIG_DFL);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if libc::setsid() < 0 {
            return fail(plan, 1);
        }
        // Close-on-exec: only its copy as standard input reaches the task.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if null < 0 || libc::dup2(null, 0) < 0 || libc::dup2(plan.out_fd, 1) < 0 || libc::dup2(plan.err_fd, 2) < 0 {
            return fail(plan, 2);
        }
        if libc::syscall(libc::SYS_setgroups, plan.n_groups, plan.groups) != 0
            || libc::syscall(libc::SYS_setresgid, plan.gid, plan.gid, plan.gid) != 0
        {
            return fail(plan, 3);
        }
        if libc::syscall(libc::SYS_setresuid, plan.uid, plan.uid, plan.uid) != 0 || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return fail(plan, 4);
        }
        if libc::chdir(plan.workdir) != 0 {
            return fail(plan, 5);
        }
        libc::execve(plan.file, plan.argv, plan.envp);
        fail(plan, 6)
    }
}

/// Like `spawn_task`, but the task runs as `run_as`: its groups, gid and uid set for good and
/// no new privileges (a setuid program it runs gains nothing) before it changes into `workdir`
/// (as that identity) and execs. posix_spawn cannot change identity, so this does what it
/// does underneath: a child that shares the launcher's memory (no page tables copied, no
/// copy-on-write faults after) while the launcher waits for its exec, all signals blocked
/// meanwhile. An error of the child (a directory the identity may not enter, a program it may
/// not run) names the step.
pub(super) fn spawn_task_as(
    run_as: &tidepool_api::RunAs,
    file: &CStr,
    argv: &[CString],
    envp: &[CString],
    workdir: &CStr,
    stdout: &File,
    stderr: &File,
) -> std::io::Result<i32> {
    let (argv, envp) = (nul_ended(argv), nul_ended(envp));
    let mut plan = ChildPlan {
        file: file.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        workdir: workdir.as_ptr(),
        groups: run_as.groups.as_ptr(),
        n_groups: run_as.groups.len(),
        uid: run_as.uid,
        gid: run_as.gid,
        out_fd: stdout.as_raw_fd(),
        err_fd: stderr.as_raw_fd(),
        failed: [0, 0],
    };
    const CHILD_STACK: usize = 64 * 1024;
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: the stack's top, aligned down to 16 bytes, lies inside the buffer we own.
    let top = unsafe { stack.as_mut_ptr().add(CHILD_STACK) as usize & !15 } as *mut libc::c_void;
    // SAFETY: every signal is blocked around the clone so that nothing runs in the child on
    // the launcher's memory before it resets them; the plan and the stack outlive the child's
    // use of them, since CLONE_VFORK returns only once it has exec'd or exited.
    let pid = unsafe {
        let (mut all, mut old): (libc::sigset_t, libc::sigset_t) = (std::mem::zeroed(), std::mem::zeroed());
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(become_task, top, libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD, (&raw mut plan).cast());
        let clone_error = std::io::Error::last_os_error();
        libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(clone_error);
        }
        pid
    };
    drop(stack);
    // SAFETY: the child wrote it, if at all, before the clone returned; read it afresh.
    let [step, errno] = unsafe { std::ptr::read_volatile(&raw const plan.failed) };
    if step == 0 {
        return Ok(pid);
    }
    // SAFETY: the child failed before exec and has ended: reap it here, not as a task.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    let step = match step {
        1 => "start a session".to_string(),
        2 => "set up its standard streams".to_string(),
        3 => format!("take groups {:?} and gid {}", run_as.groups, run_as.gid),
        4 => format!("become uid {}", run_as.uid),
        5 => format!("enter {} as uid {}", workdir.to_string_lossy(), run_as.uid),
        _ => format!("run {} as uid {}", file.to_string_lossy(), run_as.uid),
    };
    let cause = std::io::Error::from_raw_os_error(errno);
    Err(std::io::Error::new(cause.kind(), format!("cannot {step}: {cause}")))
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

/// Where a hybrid node mounts its (unused) cgroup v2 tree beside the v1 controllers.
const UNIFIED_TREE: &str = "/sys/fs/cgroup/unified";

/// True when the node mixes layouts as crun refuses to: v1 controllers under a tmpfs
/// `/sys/fs/cgroup` and a cgroup v2 tree at `unified` that holds none of the controllers
/// tasks are limited and counted with (so nothing of Tidepool's is there to lose by hiding it).
pub(super) fn hybrid_with_empty_unified_tree() -> bool {
    let magic = |path: &str| {
        let c = CString::new(path).ok()?;
        // SAFETY: statfs fills a struct we own from a NUL-terminated path.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        (unsafe { libc::statfs(c.as_ptr(), &mut fs) } == 0).then_some(fs.f_type)
    };
    let controllers = std::fs::read_to_string(Path::new(UNIFIED_TREE).join("cgroup.controllers")).unwrap_or_default();
    magic("/sys/fs/cgroup") == Some(libc::TMPFS_MAGIC) && magic(UNIFIED_TREE) == Some(libc::CGROUP2_SUPER_MAGIC) && !controllers.split_whitespace().any(|c| ["memory", "cpu", "pids"].contains(&c))
}

/// Gives the launcher (and what it starts) a mount namespace of its own, a slave of the
/// node's (mounts made later on the node still appear in it), without the empty v2 tree.
pub(super) fn hide_unified_tree() -> Result<(), String> {
    let root = CString::new("/").map_err(|e| e.to_string())?;
    let unified = CString::new(UNIFIED_TREE).map_err(|e| e.to_string())?;
    // SAFETY: unshare, mount and umount2 act on this process's own namespace with
    // NUL-terminated paths we own.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(format!("unshare(CLONE_NEWNS): {}", std::io::Error::last_os_error()));
        }
        if libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_SLAVE, std::ptr::null()) != 0 {
            return Err(format!("making / a slave mount: {}", std::io::Error::last_os_error()));
        }
        if libc::umount2(unified.as_ptr(), libc::MNT_DETACH) != 0 {
            return Err(format!("unmounting {UNIFIED_TREE}: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}
