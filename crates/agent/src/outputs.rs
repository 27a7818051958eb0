//! Which files a task's output went to, so that a log is read back only from the very file the
//! task wrote and never from a path a client chose.
//!
//! When a task's output file is opened (by the launcher, or by the agent before handing the task
//! to Slurm), one JSON line naming the attempt, the stream, the path and the file's device, inode
//! and birth time is appended to `outputs/JOB` beside the run directory. A read finds the task's latest
//! line, opens the path without following a final symlink, and refuses unless the file opened is
//! still that regular file: `--output /proc/self/environ`, a path swapped for a symlink, or a
//! file replaced since all read as nothing.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tidepool_api::AttemptRef;

/// Where output records are kept for the run directory `run_dir`.
pub fn dir_of(run_dir: &Path) -> PathBuf {
    run_dir.parent().unwrap_or(run_dir).join("outputs")
}

/// One output file of one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    index: u32,
    attempt: u32,
    stream: String,
    path: String,
    dev: u64,
    ino: u64,
    /// When the file was made (ns since the epoch), where the file system says: an inode
    /// number is reused once its file is gone, a birth time is not.
    #[serde(default)]
    born_ns: Option<u128>,
}

/// When `meta`'s file was made, ns since the epoch, if the file system keeps it.
fn born_ns(meta: &std::fs::Metadata) -> Option<u128> {
    meta.created().ok()?.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_nanos())
}

/// Appends the records of an attempt's opened output files, `(stream, path, file)`, to the job's
/// record file; paths that keep nothing (`/dev/null`) are not recorded.
pub fn record(dir: &Path, a: AttemptRef, files: &[(&str, &str, &File)]) -> std::io::Result<()> {
    let mut lines = String::new();
    for (stream, path, file) in files {
        let meta = file.metadata()?;
        if !meta.is_file() || on_kernel_filesystem(file) {
            continue;
        }
        let r = Record { index: a.index, attempt: a.attempt, stream: stream.to_string(), path: path.to_string(), dev: meta.dev(), ino: meta.ino(), born_ns: born_ns(&meta) };
        lines.push_str(&serde_json::to_string(&r).map_err(std::io::Error::other)?);
        lines.push('\n');
    }
    if lines.is_empty() {
        return Ok(());
    }
    let open = || std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(dir.join(a.job_id.to_string()));
    let mut f = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            open()?
        }
        opened => opened?,
    };
    // One write: lines of concurrent appends are never interleaved.
    f.write_all(lines.as_bytes())
}

/// True for files of /proc, /sys and the like: what reads there is the kernel's, not a task's.
fn on_kernel_filesystem(file: &File) -> bool {
    const KERNEL: [i64; 7] = [0x9fa0, 0x6265_6572, 0x0027_e0eb, 0x6367_7270, 0x6462_6720, 0x7363_6673, 0x7472_6163];
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fs` is a valid statfs to fill and the descriptor is open for the call.
    let ok = unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } == 0;
    !ok || KERNEL.contains(&(fs.f_type as i64))
}

/// The latest record of task `index` of `job_id` for `stream`.
fn latest(dir: &Path, job_id: u64, index: u32, stream: &str) -> std::io::Result<Option<Record>> {
    let text = match std::fs::read_to_string(dir.join(job_id.to_string())) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        read => read?,
    };
    Ok(text
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Record>(l).ok())
        .find(|r| r.index == index && r.stream == stream))
}

/// A piece of a task's log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Piece {
    /// Where the bytes start in the file.
    pub start: u64,
    /// The file's size when it was read.
    pub size: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// Why a log cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// The task wrote no file on this node for that stream.
    NotRecorded,
    /// The file is no longer the one the task wrote.
    Replaced(String),
    /// An I/O error.
    Io(String),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::NotRecorded => write!(f, "no output of this task was written on this node"),
            Unreadable::Replaced(path) => write!(f, "{path} is no longer the file the task wrote"),
            Unreadable::Io(e) => write!(f, "{e}"),
        }
    }
}

/// The most bytes scanned back from the end to find the start of the last lines.
const TAIL_SCAN_MAX: u64 = 64 << 20;

/// Reads up to `limit` bytes of the task's `stream` from `offset`, or, with `tail_lines`, from the
/// start of its last that many lines; only from the file the task itself wrote.
pub fn read(dir: &Path, job_id: u64, index: u32, stream: &str, offset: u64, limit: u64, tail_lines: Option<u64>) -> Result<Piece, Unreadable> {
    let io = |e: std::io::Error| Unreadable::Io(e.to_string());
    let record = latest(dir, job_id, index, stream).map_err(io)?.ok_or(Unreadable::NotRecorded)?;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&record.path);
    let mut file = match opened {
        // Removed since (Tidepool itself removes output files a task left empty).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Piece::default()),
        // A symlink put where the file was.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(Unreadable::Replaced(record.path)),
        opened => opened.map_err(io)?,
    };
    let meta = file.metadata().map_err(io)?;
    let same_birth = record.born_ns.is_none_or(|b| born_ns(&meta) == Some(b));
    if !meta.is_file() || meta.dev() != record.dev || meta.ino() != record.ino || !same_birth {
        return Err(Unreadable::Replaced(record.path));
    }
    let size = meta.len();
    let start = match tail_lines {
        Some(n) => start_of_last_lines(&mut file, size, n).map_err(io)?,
        None => offset.min(size),
    };
    let want = limit.min(size - start);
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut bytes = Vec::with_capacity(want as usize);
    file.take(want).read_to_end(&mut bytes).map_err(io)?;
    Ok(Piece { start, size, bytes })
}

/// The offset where the last `n` lines of a file of `size` bytes begin (a final newline ends the
/// last line rather than starting an empty one), looking back at most [`TAIL_SCAN_MAX`] bytes.
fn start_of_last_lines(file: &mut File, size: u64, n: u64) -> std::io::Result<u64> {
    if n == 0 {
        return Ok(size);
    }
    let floor = size.saturating_sub(TAIL_SCAN_MAX);
    let mut end = size;
    let mut newlines = 0u64;
    let mut block = vec![0u8; 64 << 10];
    while end > floor {
        let from = end.saturating_sub(block.len() as u64).max(floor);
        let chunk = &mut block[..(end - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(chunk)?;
        for (i, byte) in chunk.iter().enumerate().rev() {
            let at = from + i as u64;
            if *byte == b'\n' && at + 1 != size {
                newlines += 1;
                if newlines == n {
                    return Ok(at + 1);
                }
            }
        }
        end = from;
    }
    Ok(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tidepool-outputs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const A: AttemptRef = AttemptRef { job_id: 7, index: 3, attempt: 1 };

    #[test]
    fn reads_back_only_the_recorded_file() {
        let dir = scratch("recorded");
        let path = dir.join("out.txt");
        let file = File::create(&path).unwrap();
        std::fs::write(&path, "one\ntwo\nthree\n").unwrap();
        record(&dir.join("outputs"), A, &[("stdout", path.to_str().unwrap(), &file)]).unwrap();
        let piece = read(&dir.join("outputs"), 7, 3, "stdout", 4, 1 << 20, None).unwrap();
        assert_eq!((piece.start, piece.size, piece.bytes.as_slice()), (4, 14, &b"two\nthree\n"[..]));
        let tail = read(&dir.join("outputs"), 7, 3, "stdout", 0, 1 << 20, Some(2)).unwrap();
        assert_eq!(tail.bytes, b"two\nthree\n");
        assert_eq!(read(&dir.join("outputs"), 7, 3, "stderr", 0, 10, None), Err(Unreadable::NotRecorded));
        assert_eq!(read(&dir.join("outputs"), 7, 4, "stdout", 0, 10, None), Err(Unreadable::NotRecorded));

        // Swapped for a symlink to a secret, or for another file: nothing of it comes back.
        std::fs::write(dir.join("secret"), "secret").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), &path).unwrap();
        assert!(matches!(read(&dir.join("outputs"), 7, 3, "stdout", 0, 10, None), Err(Unreadable::Replaced(_))));
        std::fs::remove_file(&path).unwrap();
        std::fs::copy(dir.join("secret"), &path).unwrap();
        assert!(matches!(read(&dir.join("outputs"), 7, 3, "stdout", 0, 10, None), Err(Unreadable::Replaced(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn device_and_kernel_files_are_not_recorded() {
        let dir = scratch("devnull");
        let null = File::options().write(true).open("/dev/null").unwrap();
        record(&dir.join("outputs"), A, &[("stdout", "/dev/null", &null)]).unwrap();
        let environ = File::open("/proc/self/environ").unwrap();
        record(&dir.join("outputs"), A, &[("stdout", "/proc/self/environ", &environ)]).unwrap();
        assert!(!dir.join("outputs").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_last_lines_start_after_the_newline_before_them() {
        let dir = scratch("tail");
        let path = dir.join("f");
        std::fs::write(&path, "a\nb\nc").unwrap();
        let mut f = File::open(&path).unwrap();
        assert_eq!(start_of_last_lines(&mut f, 5, 1).unwrap(), 4);
        assert_eq!(start_of_last_lines(&mut f, 5, 2).unwrap(), 2);
        assert_eq!(start_of_last_lines(&mut f, 5, 9).unwrap(), 0);
        assert_eq!(start_of_last_lines(&mut f, 5, 0).unwrap(), 5);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
