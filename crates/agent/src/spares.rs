//! Attempt directories: each made once (a directory that exists was handed over already), and
//! emptied ones kept as spares renamed into place for later attempts, since ext4 creating and
//! deleting a directory per task cost more than the rest of a short task.

use crate::rundir;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The most emptied attempt directories kept for later attempts.
const MAX_SPARE_DIRS: usize = 256;

/// Emptied attempt directories kept to be renamed into place for the next attempts.
#[derive(Default)]
pub(crate) struct SpareDirs {
    dirs: Mutex<Vec<PathBuf>>,
    made: AtomicU64,
}

impl SpareDirs {
    /// The spares an earlier agent process left in `run_dir`.
    pub(crate) fn adopt(run_dir: &Path) -> SpareDirs {
        let spares = SpareDirs::default();
        if let Ok(entries) = std::fs::read_dir(run_dir) {
            let mut dirs = spares.lock();
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(rundir::SPARE_PREFIX) {
                    dirs.push(entry.path());
                }
            }
        }
        spares
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.dirs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the directory `dir` for an attempt, from a spare when there is one; fails with
    /// `AlreadyExists` when it exists.
    pub(crate) fn make(&self, dir: &Path) -> std::io::Result<()> {
        loop {
            // Popped apart from the match: the lock must not be held while a spare is put back.
            let popped = self.lock().pop();
            let Some(spare) = popped else { break };
            match rundir::rename_no_replace(&spare, dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    self.lock().push(spare);
                    return Err(e);
                }
                // Gone, or a file system without renameat2: a new directory instead.
                Err(_) => {
                    let _ = std::fs::remove_dir_all(&spare);
                }
            }
        }
        std::fs::create_dir(dir)
    }

    /// Empties an acknowledged attempt directory and keeps it as a spare, or removes it.
    pub(crate) fn give_back(&self, run_dir: &Path, dir: &Path) {
        let _ = std::fs::remove_file(dir.join(rundir::CANCEL_FILE));
        let _ = std::fs::remove_file(dir.join(rundir::SCRIPT_FILE));
        // A task spawned while the attempt ran holds a copy of its lock until its exec closes
        // it, which can come after the attempt's end: a directory still locked is not reused,
        // or the next attempt's launcher would find it taken. Once free, nothing relocks it.
        if self.lock().len() < MAX_SPARE_DIRS && !rundir::launcher_alive(dir) {
            let n = self.made.fetch_add(1, Ordering::Relaxed);
            let spare = run_dir.join(format!("{}{}.{n}", rundir::SPARE_PREFIX, std::process::id()));
            if rundir::rename_no_replace(dir, &spare).is_ok() {
                self.lock().push(spare);
                return;
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A thread that gives back the acknowledged attempt directories it is sent: kept as spares
/// for local attempts, removed for those handed to Slurm (which leave files of their own).
pub(crate) fn start_remover(run_dir: PathBuf, spares: Option<Arc<SpareDirs>>) -> std::sync::mpsc::Sender<PathBuf> {
    let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
    std::thread::spawn(move || {
        for dir in rx {
            match &spares {
                Some(spares) => spares.give_back(&run_dir, &dir),
                None => {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidepool_api::AttemptRef;

    fn lost(a: AttemptRef, message: &str) -> tidepool_api::TaskResult {
        rundir::failed_at(a, 0, message)
    }

    #[test]
    fn an_emptied_attempt_directory_serves_the_next_attempt() {
        use std::os::unix::fs::MetadataExt;
        let run = std::env::temp_dir().join(format!("tidepool-spares-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run);
        std::fs::create_dir_all(&run).unwrap();
        let spares = SpareDirs::adopt(&run);
        let first = rundir::attempt_dir(&run, &AttemptRef { job_id: 1, index: 0, attempt: 1 });
        spares.make(&first).unwrap();
        let inode = std::fs::metadata(&first).unwrap().ino();
        rundir::write_result(&first, &lost(AttemptRef { job_id: 1, index: 0, attempt: 1 }, "x")).unwrap();
        std::fs::write(first.join(rundir::CANCEL_FILE), b"").unwrap();
        spares.give_back(&run, &first);
        assert!(!first.exists());
        let second = rundir::attempt_dir(&run, &AttemptRef { job_id: 1, index: 1, attempt: 1 });
        spares.make(&second).unwrap();
        assert_eq!(std::fs::metadata(&second).unwrap().ino(), inode, "the spare was renamed into place");
        assert!(rundir::read_result(&second).is_none(), "no result carried over");
        assert!(!second.join(rundir::CANCEL_FILE).exists(), "no cancel mark carried over");
        // A directory made twice is refused, and the spare kept (not lost, no deadlock).
        rundir::write_result(&second, &lost(AttemptRef { job_id: 1, index: 1, attempt: 1 }, "y")).unwrap();
        spares.give_back(&run, &second);
        std::fs::create_dir(&first).unwrap();
        let twice = spares.make(&first).unwrap_err();
        assert_eq!(twice.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(spares.lock().len(), 1);
        // A restarted agent adopts what the earlier one kept.
        assert_eq!(SpareDirs::adopt(&run).lock().len(), 1);
        // A directory whose lock someone still holds is removed, not kept.
        let third = rundir::attempt_dir(&run, &AttemptRef { job_id: 1, index: 2, attempt: 1 });
        std::fs::create_dir(&third).unwrap();
        rundir::write_result(&third, &lost(AttemptRef { job_id: 1, index: 2, attempt: 1 }, "z")).unwrap();
        let holder = std::fs::File::open(&third).unwrap();
        assert!(rundir::try_flock(&holder, true));
        spares.give_back(&run, &third);
        assert!(!third.exists());
        assert_eq!(spares.lock().len(), 1, "a locked directory is not a spare");
        drop(holder);
        let _ = std::fs::remove_dir_all(&run);
    }
}
