//! The helper that runs as the first process of a job's shared container
//! (`PROGRAM __inside`): the OCI runtime made the container once (namespaces, identity, no
//! privileges, cgroup, mounts), and each task of the job is then one posix_spawn inside it
//! rather than one runtime start. It reads orders from the socket it was handed (descriptor 3) and reports each
//! task's end there; when the socket closes it ends what still runs and exits, which ends the
//! container.

use super::files::{resolve, with_umask};
use super::sys::{signal_fd, signal_tree, spawn_task, take_signals, warn_ahead_of_limit, PASSED_FD};
use super::TASK_UMASK;
use crate::rundir::{InsideEnded, InsideOrder};
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The largest order or report: a task's environment rides in its start order.
pub(super) const MAX_MESSAGE: usize = 4 << 20;

/// The largest report: a task's end, its message cut to [`MAX_REPORT_MESSAGE`] characters.
pub(super) const MAX_REPORT: usize = 64 << 10;
const MAX_REPORT_MESSAGE: usize = 4096;

/// Descriptors a message may bring.
const MAX_FDS: usize = 4;

/// A pair of connected sequenced-packet sockets (message boundaries kept, descriptors passed).
pub(super) fn socket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills the two descriptors, which are then owned here.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let size = MAX_MESSAGE as libc::c_int;
    for fd in fds {
        // SAFETY: setsockopt reads an int we own; a smaller buffer only means more waits.
        unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, (&size as *const libc::c_int).cast(), 4) };
    }
    // SAFETY: both were just made and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends one message with `fds`; `WouldBlock` when the peer has not read enough yet and
/// `wait` is false.
pub(super) fn send_message(socket: RawFd, bytes: &[u8], fds: &[RawFd], wait: bool) -> std::io::Result<()> {
    let mut control = [0u64; 8];
    // SAFETY: the message header points at memory that lives across the call; the control
    // buffer is large and aligned enough for MAX_FDS descriptors.
    unsafe {
        let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let fds = &fds[..fds.len().min(MAX_FDS)];
            let data_len = std::mem::size_of_val(fds) as u32;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(data_len) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.len());
        }
        let flags = libc::MSG_NOSIGNAL | if wait { 0 } else { libc::MSG_DONTWAIT };
        if libc::sendmsg(socket, &msg, flags) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one message into `buf` without waiting: its length and the descriptors it
/// brought; `None` once the peer has closed; `WouldBlock` when nothing waits.
pub(super) fn recv_message(socket: RawFd, buf: &mut [u8]) -> std::io::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut control = [0u64; 8];
    // SAFETY: as in `send_message`; every descriptor received is taken into an OwnedFd.
    unsafe {
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        let n = libc::recvmsg(socket, &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut fds = Vec::new();
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if n == 0 && fds.is_empty() {
            return Ok(None);
        }
        if msg.msg_flags & libc::MSG_TRUNC != 0 {
            return Err(std::io::Error::other("a message longer than the largest allowed"));
        }
        Ok(Some((n as usize, fds)))
    }
}

/// Runs the helper on the socket at descriptor 3 until it closes and its tasks have ended.
pub fn serve_inside() -> i32 {
    match Inside::default().serve() {
        Ok(()) => 0,
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "tidepool-inside: {message}");
            1
        }
    }
}

#[derive(Default)]
struct Inside {
    /// Running tasks by their leader's pid (in the container's namespace), and back.
    by_pid: HashMap<i32, u64>,
    by_task: HashMap<u64, i32>,
}

impl Inside {
    fn serve(&mut self) -> Result<(), String> {
        let signals = signal_fd(&[libc::SIGCHLD])?;
        let socket: RawFd = PASSED_FD;
        // Its tasks get their standard streams and nothing of the helper's: not its socket.
        // SAFETY: fcntl on a descriptor this process holds; no memory is touched.
        if unsafe { libc::fcntl(socket, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(format!("no socket on descriptor {socket}: {}", std::io::Error::last_os_error()));
        }
        let mut open = true;
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            if !open && self.by_pid.is_empty() {
                return Ok(());
            }
            let mut fds = [
                libc::pollfd { fd: if open { socket } else { -1 }, events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: signals, events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: poll over two pollfd structs we own.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            while open {
                match recv_message(socket, &mut buf) {
                    Ok(Some((n, passed))) => match serde_json::from_slice::<InsideOrder>(&buf[..n]) {
                        Ok(order) => self.obey(order, passed),
                        Err(e) => return Err(format!("an order that is not one: {e}")),
                    },
                    Ok(None) => {
                        // The launcher is gone or done with this container: nothing may run on.
                        open = false;
                        for pid in self.by_pid.keys() {
                            signal_tree(*pid, &[], libc::SIGKILL);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(format!("reading orders: {e}")),
                }
            }
            if fds[1].revents != 0 {
                take_signals(signals);
            }
            self.reap(socket);
        }
    }

    fn obey(&mut self, order: InsideOrder, passed: Vec<OwnedFd>) {
        match order {
            InsideOrder::Start { task, program, argv, env, cwd } => {
                let mut files = passed.into_iter().map(File::from);
                let (Some(stdout), stderr) = (files.next(), files.next()) else {
                    return self.report(InsideEnded { task, status: 127 << 8, cpu_ms: 0, peak_mem_bytes: 0, message: Some("no output files came with the task".into()) });
                };
                let stderr = stderr.or_else(|| stdout.try_clone().ok());
                match self.start(&program, &argv, &env, &cwd, &stdout, stderr.as_ref().unwrap_or(&stdout)) {
                    Ok(pid) => {
                        self.by_pid.insert(pid, task);
                        self.by_task.insert(task, pid);
                    }
                    Err(message) => {
                        let _ = writeln!(stderr.as_ref().unwrap_or(&stdout), "tidepool: {message}");
                        let message = message.chars().take(MAX_REPORT_MESSAGE).collect();
                        self.report(InsideEnded { task, status: 127 << 8, cpu_ms: 0, peak_mem_bytes: 0, message: Some(message) });
                    }
                }
            }
            InsideOrder::Signal { task, signal } => {
                if let Some(pid) = self.by_task.get(&task) {
                    signal_tree(*pid, &[], signal);
                }
            }
            InsideOrder::Warn { task, warn, script } => {
                if let Some(pid) = self.by_task.get(&task) {
                    warn_ahead_of_limit(*pid, &[], warn, script);
                }
            }
        }
    }

    fn start(&self, program: &str, argv: &[String], env: &[String], cwd: &str, stdout: &File, stderr: &File) -> Result<i32, String> {
        let path = env.iter().find_map(|kv| kv.strip_prefix("PATH=")).unwrap_or("/usr/local/bin:/usr/bin:/bin");
        let file = resolve(program, path, cwd);
        let c = |s: &str| CString::new(s).map_err(|_| format!("cannot start {program}: a word holds a NUL byte"));
        let argv = argv.iter().map(|a| c(a)).collect::<Result<Vec<_>, _>>()?;
        let envp = env.iter().map(|e| c(e)).collect::<Result<Vec<_>, _>>()?;
        let (file, cwd) = (c(&file)?, c(cwd)?);
        with_umask(TASK_UMASK, || spawn_task(&file, &argv, &envp, &cwd, stdout, stderr)).map_err(|e| format!("cannot start {program}: {e}"))
    }

    /// Collects every ended child: as the container's first process it also reaps what
    /// tasks left behind. A task's end takes what remains of its process group with it.
    fn reap(&mut self, socket: RawFd) {
        loop {
            let mut status = 0;
            let mut usage: libc::rusage = super::sys::zeroed_rusage();
            // SAFETY: wait4 on our own children, filling a status and rusage we own.
            let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut usage) };
            if pid <= 0 {
                return;
            }
            let Some(task) = self.by_pid.remove(&pid) else { continue };
            self.by_task.remove(&task);
            signal_tree(pid, &[], libc::SIGKILL);
            let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
            let ended = InsideEnded { task, status, cpu_ms: ms(usage.ru_utime) + ms(usage.ru_stime), peak_mem_bytes: usage.ru_maxrss as u64 * 1024, message: None };
            send_report(socket, &ended);
        }
    }

    fn report(&self, ended: InsideEnded) {
        send_report(PASSED_FD, &ended);
    }
}

/// One report to the launcher, waiting for room: the launcher never waits on the helper, so
/// this wait ends.
fn send_report(socket: RawFd, ended: &InsideEnded) {
    if let Ok(bytes) = serde_json::to_vec(ended) {
        let _ = send_message(socket, &bytes, &[], true);
    }
}
