//! Per-task cgroups: v2 where the node has a v2 hierarchy with controllers, v1 `memory` +
//! `cpuacct` where that is what is mounted, none otherwise (usage then comes from getrusage).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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

    /// Whether an emptied task cgroup can serve another task: under v1 when its last task left
    /// next to no memory charged to it (page cache it wrote would count in the next task's
    /// peak; emptying it with `memory.force_empty` costs more than a new cgroup); never under
    /// v2, whose `cpu.stat` cannot be reset.
    pub fn reusable(&self, name: &str) -> bool {
        match self {
            CgroupPlan::V1 { memory, .. } => std::fs::read_to_string(memory.join(name).join("memory.usage_in_bytes"))
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some_and(|bytes| bytes <= REUSE_MAX_CHARGED_BYTES),
            CgroupPlan::V2 { .. } | CgroupPlan::None => false,
        }
    }

    /// Readies an emptied task cgroup for its next task: its memory limit set, its CPU time
    /// and peak memory counted from zero; false when that failed.
    pub fn reset(&self, name: &str, mem_limit: u64) -> bool {
        match self {
            CgroupPlan::V1 { memory, cpuacct } => {
                let limit = if mem_limit > 0 { mem_limit.to_string() } else { "-1".into() };
                std::fs::write(memory.join(name).join("memory.limit_in_bytes"), limit).is_ok()
                    && std::fs::write(memory.join(name).join("memory.max_usage_in_bytes"), "0").is_ok()
                    && std::fs::write(cpuacct.join(name).join("cpuacct.usage"), "0").is_ok()
            }
            CgroupPlan::V2 { .. } | CgroupPlan::None => false,
        }
    }

    /// (CPU ms, peak memory bytes) of a task's cgroup.
    pub fn usage(&self, name: &str) -> Option<(u64, u64)> {
        let read = |p: PathBuf| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
        match self {
            CgroupPlan::None => None,
            CgroupPlan::V1 { memory, cpuacct } => {
                let cpu_ns = read(cpuacct.join(name).join("cpuacct.usage"))?;
                let peak = read(memory.join(name).join("memory.max_usage_in_bytes")).unwrap_or(0);
                Some((cpu_ns / 1_000_000, peak))
            }
            CgroupPlan::V2 { root } => {
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
        }
    }

    /// Every process in a task's cgroup.
    pub fn pids(&self, name: &str) -> Vec<i32> {
        self.task_dirs(name)
            .into_iter()
            .take(1)
            .flat_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<i32>>())
            .collect()
    }

    /// Removes a task's (empty) cgroup.
    pub fn remove(&self, name: &str) {
        for dir in self.task_dirs(name) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
