//! The task's files as the launcher prepares them: its output opened without following a link,
//! its program found on its own PATH, its batch script written and handed to its identity.

use crate::rundir::{self, LaunchSpec};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The file-creation mask a task starts with, as a login shell's; the launcher's own is 077.
pub(super) const TASK_UMASK: libc::mode_t = 0o022;

/// Runs `f` with the process's file-creation mask set to `mask`; the launcher is one thread,
/// so nothing else creates a file meanwhile.
pub(super) fn with_umask<T>(mask: libc::mode_t, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask(2) swaps this process's mask and cannot fail.
    let old = unsafe { libc::umask(mask) };
    let out = f();
    // SAFETY: as above, putting the earlier mask back.
    unsafe { libc::umask(old) };
    out
}

/// Opens (truncating) a task's output file, making missing directories as Slurm users expect:
/// owner-only in Tidepool's own log directory (`private`), else as the task's umask allows.
pub(super) fn open_output(path: &str, private: bool, append: bool) -> Result<File, String> {
    use std::os::unix::fs::DirBuilderExt;
    let (mask, file_mode, dir_mode) = if private { (0o077, 0o600, 0o700) } else { (TASK_UMASK, 0o666, 0o777) };
    // Never through a symlink: a link planted at the path would aim the task's output (and the
    // truncation) at another file.
    let open = || OpenOptions::new().create(true).write(true).truncate(!append).append(append).mode(file_mode).custom_flags(libc::O_NOFOLLOW).open(path);
    let opened = with_umask(mask, || match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = Path::new(path).parent() {
                let _ = std::fs::DirBuilder::new().recursive(true).mode(dir_mode).create(parent);
            }
            open()
        }
        opened => opened,
    });
    opened.map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => format!("cannot open {path}: it is a symbolic link, and output is never written through one"),
        _ => format!("cannot open {path}: {e}"),
    })
}

/// The program to start and its arguments; a batch script is written to the attempt directory.
pub(super) fn program_of(spec: &LaunchSpec, dir: &Path) -> Result<(String, Vec<String>), String> {
    let launch = &spec.launch;
    match &launch.script {
        Some(script) => {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join(rundir::SCRIPT_FILE);
            std::fs::write(&path, script).map_err(|e| format!("script: {e}"))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).map_err(|e| format!("script: {e}"))?;
            Ok((path.display().to_string(), vec![]))
        }
        None => {
            let (first, rest) = launch.command.split_first().ok_or("empty command")?;
            Ok((first.clone(), rest.to_vec()))
        }
    }
}

/// The batch script at `path` given to `identity` (owner, mode 0500) and opened without
/// close-on-exec, with the path a task reaches it by through that descriptor.
pub(super) fn script_for(path: &Path, identity: &tidepool_api::RunAs) -> Result<(File, String), String> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(path, Some(identity.uid), Some(identity.gid)).map_err(|e| format!("script: {e}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o500)).map_err(|e| format!("script: {e}"))?;
    let file = File::open(path).map_err(|e| format!("script: {e}"))?;
    // SAFETY: fcntl on a descriptor we own, clearing only its close-on-exec flag.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFD);
        libc::fcntl(file.as_raw_fd(), libc::F_SETFD, flags & !libc::FD_CLOEXEC);
    }
    let via = format!("/dev/fd/{}", file.as_raw_fd());
    Ok((file, via))
}

/// `program` as found on the task's own PATH (posix_spawn would search the launcher's).
pub(super) fn resolve(program: &str, path: &str, workdir: &str) -> String {
    if program.contains('/') {
        return program.to_string();
    }
    for entry in path.split(':') {
        let dir = if entry.is_empty() { Path::new(workdir).to_path_buf() } else { Path::new(workdir).join(entry) };
        let candidate = dir.join(program);
        if is_executable(&candidate) {
            return candidate.display().to_string();
        }
    }
    program.to_string()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

