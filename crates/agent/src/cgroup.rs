//! Per-task cgroups: v2 where the node has a v2 hierarchy with controllers, v1 `memory` +
//! `cpuacct` where that is what is mounted, none otherwise (usage then comes from getrusage).

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The child cgroup of a task's that holds its container.
pub const CONTAINER_CGROUP: &str = "ctr";

/// The most memory an emptied cgroup may still have charged to be used for another task.
const REUSE_MAX_CHARGED_BYTES: u64 = 1 << 20;

/// How this node confines and measures tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupPlan {
    /// Plain processes; usage from getrusage, memory limits not enforced.
    None,
    /// cgroup v1: one directory under each controller's `tidepool/`.
    V1 {
        /// `/sys/fs/cgroup/memory/tidepool`.
        memory: PathBuf,
        /// `/sys/fs/cgroup/cpuacct/tidepool`.
        cpuacct: PathBuf,
    },
    /// cgroup v2: one directory under `tidepool/` of a hierarchy with the controllers on.
    V2 {
        /// e.g. `/sys/fs/cgroup/tidepool`.
        root: PathBuf,
    },
}

impl CgroupPlan {
    /// Finds what this node offers; `why` says what was chosen and why, for one log line.
    pub fn detect() -> (CgroupPlan, String) {
        if std::env::var("TIDEPOOL_CGROUPS").is_ok_and(|v| v == "none") {
            return (CgroupPlan::None, "cgroups off (TIDEPOOL_CGROUPS=none): usage from getrusage, --mem not enforced".into());
        }
        for base in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
            let base = Path::new(base);
            let controllers = std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
            if controllers.split_whitespace().any(|c| c == "memory") {
                let root = base.join("tidepool");
                let ok = std::fs::create_dir_all(&root).is_ok()
                    && std::fs::write(base.join("cgroup.subtree_control"), "+memory +cpu +pids").is_ok()
                    && std::fs::write(root.join("cgroup.subtree_control"), "+memory +cpu +pids").is_ok();
                if ok {
                    return (CgroupPlan::V2 { root: root.clone() }, format!("cgroup v2 at {}", root.display()));
                }
            }
        }
        let memory = Path::new("/sys/fs/cgroup/memory/tidepool");
        let cpuacct = Path::new("/sys/fs/cgroup/cpuacct/tidepool");
        if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
            && Path::new("/sys/fs/cgroup/cpuacct/cpuacct.usage").exists()
            && std::fs::create_dir_all(memory).is_ok()
            && std::fs::create_dir_all(cpuacct).is_ok()
        {
            return (
                CgroupPlan::V1 { memory: memory.into(), cpuacct: cpuacct.into() },
                "cgroup v1 (memory, cpuacct): limits enforced, usage measured per task".into(),
            );
        }
        (
            CgroupPlan::None,
            "no writable cgroup hierarchy: plain processes, usage from getrusage, --mem not enforced".into(),
        )
    }

    /// The directories of one task's cgroup, one per hierarchy.
    pub fn task_dirs(&self, name: &str) -> Vec<PathBuf> {
        match self {
            CgroupPlan::None => vec![],
            CgroupPlan::V1 { memory, cpuacct } => vec![memory.join(name), cpuacct.join(name)],
            CgroupPlan::V2 { root } => vec![root.join(name)],
        }
    }

    /// Creates a task's cgroup and sets its memory limit.
    pub fn create(&self, name: &str, mem_limit: u64) -> std::io::Result<()> {
        for dir in self.task_dirs(name) {
            std::fs::create_dir_all(&dir)?;
        }
        if mem_limit > 0 {
            match self {
                CgroupPlan::V1 { memory, .. } => {
                    std::fs::write(memory.join(name).join("memory.limit_in_bytes"), mem_limit.to_string())?;
                }
                CgroupPlan::V2 { root } => {
                    std::fs::write(root.join(name).join("memory.max"), mem_limit.to_string())?;
                    let _ = std::fs::write(root.join(name).join("memory.swap.max"), "0");
                }
                CgroupPlan::None => {}
            }
        }
        Ok(())
    }

    /// A task cgroup made by `create`, with its control files opened.
    pub fn open(&self, name: &str) -> std::io::Result<TaskCgroup> {
        let dirs = self.task_dirs(name);
        let write = |p: PathBuf| OpenOptions::new().write(true).open(p);
        let join = dirs.iter().map(|d| write(d.join("cgroup.procs"))).collect::<std::io::Result<Vec<File>>>()?;
        let members = dirs.first().map(|d| File::open(d.join("cgroup.procs"))).transpose()?;
        let counters = match self {
            CgroupPlan::V1 { memory, cpuacct } => {
                let rw = |p: PathBuf| OpenOptions::new().read(true).write(true).open(p);
                Some(V1Counters {
                    limit: write(memory.join(name).join("memory.limit_in_bytes"))?,
                    peak: rw(memory.join(name).join("memory.max_usage_in_bytes"))?,
                    usage: File::open(memory.join(name).join("memory.usage_in_bytes"))?,
                    cpu: rw(cpuacct.join(name).join("cpuacct.usage"))?,
                })
            }
            CgroupPlan::V2 { .. } | CgroupPlan::None => None,
        };
        let nested = dirs.first().map(|d| d.join(CONTAINER_CGROUP).join("cgroup.procs"));
        Ok(TaskCgroup { name: name.to_string(), join, members, nested, counters })
    }

    /// (CPU ms, peak memory bytes) of a task's cgroup v2, read once at its end (a v2 cgroup
    /// serves one task, so its files are not kept open).
    fn v2_usage(&self, name: &str) -> Option<(u64, u64)> {
        let CgroupPlan::V2 { root } = self else { return None };
        let read = |p: PathBuf| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
        let stat = std::fs::read_to_string(root.join(name).join("cpu.stat")).ok()?;
        let usec: u64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let peak = read(root.join(name).join("memory.peak"))
            .or_else(|| read(root.join(name).join("memory.current")))
            .unwrap_or(0);
        Some((usec / 1000, peak))
    }

    /// Sets the memory limit of `cgroup` to `bytes` (none when 0).
    pub fn limit_memory(&self, cgroup: &TaskCgroup, bytes: u64) -> std::io::Result<()> {
        match self {
            CgroupPlan::V1 { .. } => cgroup.write_limit(bytes),
            CgroupPlan::V2 { root } => std::fs::write(root.join(&cgroup.name).join("memory.max"), if bytes > 0 { bytes.to_string() } else { "max".into() }),
            CgroupPlan::None => Ok(()),
        }
    }

    /// Closes a task cgroup's files and removes it (it must be empty).
    pub fn discard(&self, cgroup: TaskCgroup) {
        let name = cgroup.name.clone();
        drop(cgroup);
        self.remove(&name);
    }

    /// Removes a task's (empty) cgroup.
    pub fn remove(&self, name: &str) {
        for dir in self.task_dirs(name) {
            let _ = std::fs::remove_dir(dir.join(CONTAINER_CGROUP));
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// The path a container runtime is given for a task's container (OCI `cgroupsPath`): a child
    /// of the task's cgroup, so the task's limits hold it and its usage counts in the task's.
    pub fn container_path(&self, name: &str) -> Option<String> {
        let (dir, mount) = match self {
            CgroupPlan::None => return None,
            CgroupPlan::V1 { memory, .. } => (memory.join(name), Path::new("/sys/fs/cgroup/memory")),
            CgroupPlan::V2 { root } => (root.join(name), Path::new("/sys/fs/cgroup")),
        };
        let relative = dir.strip_prefix(mount).ok()?;
        Some(format!("/{}/{CONTAINER_CGROUP}", relative.display()))
    }
}

/// The cgroup v1 counters of a task cgroup.
struct V1Counters {
    limit: File,
    peak: File,
    usage: File,
    cpu: File,
}

/// A task cgroup with its control files held open for as long as it is used and kept for
/// later tasks (opening kernfs files per task showed in the launcher's profile).
pub struct TaskCgroup {
    /// Its name under the plan's `tidepool/`.
    pub name: String,
    /// `cgroup.procs` of each hierarchy, written to join it.
    join: Vec<File>,
    /// `cgroup.procs` of the first hierarchy, read to list its processes.
    members: Option<File>,
    /// `cgroup.procs` of the child cgroup a container runtime makes for the task's container.
    nested: Option<PathBuf>,
    counters: Option<V1Counters>,
}

/// The whole text of an open kernfs file, read from its start.
fn read_from_start(file: &File) -> Option<String> {
    let mut text = Vec::with_capacity(64);
    let mut chunk = [0u8; 4096];
    loop {
        let n = file.read_at(&mut chunk, text.len() as u64).ok()?;
        text.extend_from_slice(&chunk[..n]);
        // A kernfs read fills the buffer unless it reached the end: a short one is the last.
        if n < chunk.len() {
            return String::from_utf8(text).ok();
        }
    }
}

fn read_number(file: &File) -> Option<u64> {
    read_from_start(file)?.trim().parse().ok()
}

impl TaskCgroup {
    /// The `cgroup.procs` files that a process writes its pid to in order to join.
    pub fn join_files(&self) -> &[File] {
        &self.join
    }

    /// Every process in it, its container's included.
    pub fn pids(&self) -> Vec<i32> {
        let mut text = self.members.as_ref().and_then(read_from_start).unwrap_or_default();
        if let Some(nested) = &self.nested {
            text.push_str(&std::fs::read_to_string(nested).unwrap_or_default());
        }
        text.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// (CPU ms, peak memory bytes) of what ran in it.
    pub fn usage(&self, plan: &CgroupPlan) -> Option<(u64, u64)> {
        match &self.counters {
            Some(c) => Some((read_number(&c.cpu)? / 1_000_000, read_number(&c.peak).unwrap_or(0))),
            None => plan.v2_usage(&self.name),
        }
    }

    /// Whether it can serve another task once emptied: under v1 when its last task left next
    /// to no memory charged to it (page cache it wrote would count in the next task's peak;
    /// emptying it with `memory.force_empty` costs more than a new cgroup); never under v2,
    /// whose `cpu.stat` cannot be reset.
    pub fn reusable(&self) -> bool {
        self.counters.as_ref().and_then(|c| read_number(&c.usage)).is_some_and(|bytes| bytes <= REUSE_MAX_CHARGED_BYTES)
    }

    /// Readies it, emptied, for its next task: its memory limit set, its CPU time and peak
    /// memory counted from zero; false when that failed.
    pub fn reset(&self, mem_limit: u64) -> bool {
        let Some(c) = &self.counters else { return false };
        self.write_limit(mem_limit).is_ok() && c.peak.write_at(b"0", 0).is_ok() && c.cpu.write_at(b"0", 0).is_ok()
    }

    /// Sets its v1 memory limit to `bytes` (none when 0) through the file it holds open.
    fn write_limit(&self, bytes: u64) -> std::io::Result<()> {
        let Some(c) = &self.counters else { return Err(std::io::Error::other("no memory.limit_in_bytes held open")) };
        let limit = if bytes > 0 { bytes.to_string() } else { "-1".into() };
        c.limit.write_at(limit.as_bytes(), 0).map(drop)
    }
}
