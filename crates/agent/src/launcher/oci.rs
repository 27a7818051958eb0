//! A task's OCI bundle: the `config.json` a runtime (runc, crun) runs it from, over the image's
//! root filesystem shared read-only by every task of that image.

use super::sys::{hide_unified_tree, hybrid_with_empty_unified_tree, spawn_passing, with_fs_identity};
use crate::images::Runtime;
use std::io::Write;
use super::{with_umask, Launcher, TASK_UMASK};
use crate::rundir::{self, LaunchSpec};
use std::ffi::CString;
use std::fs::File;
use std::path::Path;
use tidepool_api::{ContainerLaunch, Launch};

/// Where a batch script is found inside its container (on the container's own /tmp).
pub(super) const SCRIPT_INSIDE: &str = "/tmp/.tidepool-batch-script";

/// Where the runtime keeps its containers' state, under the run directory.
pub(super) const RUNTIME_STATE_DIR: &str = "oci";

/// The container's id: its attempt's, unique on the node.
pub(super) fn container_id(launch: &Launch) -> String {
    let a = launch.attempt;
    format!("tidepool-{}.{}.{}", a.job_id, a.index, a.attempt)
}

/// The environment inside: the image's, then the task's, except that the image's PATH wins
/// (the submitter's PATH names directories of its own machine, not of the image).
pub(super) fn environment(launch: &Launch, container: &ContainerLaunch) -> Vec<String> {
    let mut env: Vec<(String, String)> = container
        .image_env
        .iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let image_path = env.iter().any(|(k, _)| k == "PATH");
    for (k, v) in &launch.env {
        if k == "PATH" && image_path && !container.task_env_wins.iter().any(|w| w == "PATH") {
            continue;
        }
        env.retain(|(key, _)| key != k);
        env.push((k.clone(), v.clone()));
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The device nodes of `gpus` under `dev` (`/dev`): each GPU's `nvidiaN` and the driver's
/// shared ones, as (path inside, major, minor); none where the node has no such devices
/// (stand-in GPUs).
pub(super) fn gpu_devices(dev: &Path, gpus: &[u32]) -> Vec<(String, u64, u64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if gpus.is_empty() {
        return Vec::new();
    }
    let names = gpus.iter().map(|i| format!("nvidia{i}")).chain(["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"].map(String::from));
    names
        .filter_map(|name| {
            let meta = std::fs::metadata(dev.join(&name)).ok()?;
            meta.file_type().is_char_device().then(|| {
                let rdev = meta.rdev();
                (format!("/dev/{name}"), libc::major(rdev) as u64, libc::minor(rdev) as u64)
            })
        })
        .collect()
}

pub(super) fn bind(source: &str, destination: &str, read_only: bool) -> serde_json::Value {
    let mut options = vec!["rbind", "nosuid", "nodev"];
    if read_only {
        options.push("ro");
    }
    serde_json::json!({"destination": destination, "type": "bind", "source": source, "options": options})
}

/// The bundle's `config.json`: the task's command as `uid`/`gid` (and groups), no new
/// privileges and no capabilities, the host's network, its own PID, IPC, UTS and mount
/// namespaces, the job's working directory bound at the same path, the asked mounts, a
/// /dev/shm of the asked size, exactly the `devices` given (the task's GPUs, from
/// [`gpu_devices`]), and its cgroup a child of the task's (`cgroups_path`).
pub(super) fn config(
    launch: &Launch,
    container: &ContainerLaunch,
    args: &[String],
    user: (u32, u32, &[u32]),
    devices: &[(String, u64, u64)],
    cgroups_path: Option<&str>,
) -> serde_json::Value {
    let (uid, gid, groups) = user;
    let cwd = container.workdir.clone().unwrap_or_else(|| launch.workdir.clone());
    let mut mounts = vec![
        serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        serde_json::json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        serde_json::json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        serde_json::json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", format!("size={}", container.shm_bytes.max(1 << 20))]}),
        serde_json::json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        serde_json::json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        serde_json::json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}),
    ];
    for file in ["/etc/resolv.conf", "/etc/hosts"] {
        if Path::new(file).exists() {
            mounts.push(bind(file, file, true));
        }
    }
    let workdir_bound = container.mounts.iter().any(|m| m.split(':').nth(1) == Some(launch.workdir.as_str()));
    if container.workdir.is_none() && launch.workdir != "/" && !workdir_bound {
        mounts.push(bind(&launch.workdir, &launch.workdir, false));
    }
    for mount in &container.mounts {
        let parts: Vec<&str> = mount.split(':').collect();
        if let [source, destination, rest @ ..] = parts.as_slice() {
            mounts.push(bind(source, destination, rest.first() == Some(&"ro")));
        }
    }
    let mut namespaces = vec![serde_json::json!({"type": "pid"}), serde_json::json!({"type": "ipc"}), serde_json::json!({"type": "uts"}), serde_json::json!({"type": "mount"})];
    if container.isolated_network {
        namespaces.push(serde_json::json!({"type": "network"}));
    }
    let mut linux = serde_json::json!({
        "namespaces": namespaces,
        "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    });
    if let Some(path) = cgroups_path {
        linux["cgroupsPath"] = serde_json::json!(path);
    }
    // Exactly the task's GPUs, and the driver's shared nodes, and no other device.
    if !devices.is_empty() {
        linux["devices"] = devices
            .iter()
            .map(|(path, major, minor)| serde_json::json!({"path": path, "type": "c", "major": major, "minor": minor, "fileMode": 0o666, "uid": 0, "gid": 0}))
            .collect();
        let mut allow = vec![serde_json::json!({"allow": false, "access": "rwm"})];
        allow.extend(devices.iter().map(|(_, major, minor)| serde_json::json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"})));
        linux["resources"] = serde_json::json!({"devices": allow});
    }
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid, "additionalGids": groups},
            "args": args,
            "env": environment(launch, container),
            "cwd": cwd,
            "noNewPrivileges": true,
            "capabilities": {"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []},
        },
        "root": {"path": container.rootfs, "readonly": true},
        "hostname": "tidepool",
        "mounts": mounts,
        "linux": linux,
    })
}

/// One start of the OCI runtime: the bundle, the container's id, the image it runs (for
/// messages), the runtime's stdio and what it hands on.
pub(super) struct RuntimeRun<'a> {
    pub(super) bundle: &'a Path,
    pub(super) id: &'a str,
    pub(super) image: &'a str,
    /// Handed to the container's process as descriptor 3.
    pub(super) passed: Option<std::os::fd::RawFd>,
    pub(super) stdout: &'a File,
    pub(super) stderr: &'a File,
}

/// The uid, gid and groups a task's container process runs as: its identity's, else the
/// launcher's own.
pub(super) fn user_of(launch: &Launch) -> (u32, u32, &[u32]) {
    // SAFETY: geteuid and getegid only read this process's credentials.
    let own = unsafe { (libc::geteuid(), libc::getegid()) };
    launch.run_as.as_ref().map_or((own.0, own.1, &[][..]), |id| (id.uid, id.gid, id.groups.as_slice()))
}

/// A container whose bind sources were each opened as the task's identity and bound, from
/// that descriptor, onto a staging path of the launcher's own: the runtime binds as root,
/// which may pass directories the identity may not, so what it binds is what the identity
/// reached, whatever the user's path names by the time the runtime binds it.
pub(super) struct Reached {
    /// The container, its mounts' sources (and the working directory's) staging paths.
    pub(super) container: ContainerLaunch,
    /// The staged sources, unmounted when dropped (once the container is gone).
    pub(super) held: Vec<Staged>,
}

/// A bind source staged under the launcher's run directory; unmounted and removed on drop.
pub(super) struct Staged {
    path: std::path::PathBuf,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Ok(c) = CString::new(self.path.as_os_str().as_encoded_bytes()) {
            // SAFETY: umount2 reads a NUL-ended path we own.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.path).or_else(|_| std::fs::remove_file(&self.path));
    }
}

/// Opens `path` for naming only (`O_PATH`): no read or write, but the caller's right to reach
/// it is checked on the way.
fn open_path(path: &str) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let c = CString::new(path).map_err(|_| std::io::Error::other("the path holds a NUL byte"))?;
    // SAFETY: open reads a NUL-ended path we own; the descriptor is then owned here.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor just opened, owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Binds what `fd` names (and what is mounted under it) onto `path`, made as a directory or
/// a file to match.
fn stage(fd: &std::os::fd::OwnedFd, path: &Path) -> std::io::Result<Staged> {
    use std::os::fd::AsRawFd;
    let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
    if std::fs::metadata(&source)?.is_dir() {
        std::fs::create_dir(path)?;
    } else {
        File::create(path)?;
    }
    let staged = Staged { path: path.to_path_buf() };
    let (from, to) = (CString::new(source).map_err(std::io::Error::other)?, CString::new(path.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?);
    // SAFETY: mount reads NUL-ended paths we own; no file system type or data is passed.
    if unsafe { libc::mount(from.as_ptr(), to.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(staged)
}

/// Where bind sources are staged, under the run directory.
const STAGED_DIR: &str = "staged-binds";

/// Unmounts and removes the staged bind sources and shared containers' bundles that
/// launchers no longer alive left under `run_dir` (killed, they could not); run before this
/// launcher leaves the node's mount namespace, where such mounts live.
pub(super) fn clear_stale(run_dir: &Path) {
    let alive = rundir::live_launchers(run_dir);
    // Staged sources are named `PID.N`, bundles `...PID`.
    let left_by_dead = |dir: &str, pid: fn(&str) -> Option<&str>| -> Vec<std::path::PathBuf> {
        let Ok(entries) = std::fs::read_dir(run_dir.join(dir)) else { return Vec::new() };
        entries
            .flatten()
            .filter(|e| pid(&e.file_name().to_string_lossy()).and_then(|p| p.parse().ok()).is_some_and(|p: u32| !alive.contains(&p)))
            .map(|e| e.path())
            .collect()
    };
    for path in left_by_dead(STAGED_DIR, |name| name.split('.').next()) {
        drop(Staged { path });
    }
    for path in left_by_dead(super::shared::BUNDLES_DIR, |name| name.rsplit('.').next()) {
        let _ = std::fs::remove_dir_all(path);
    }
}

/// The container of `launch` with its bind sources reached as its identity and staged under
/// `run_dir` (see [`Reached`]); a task with no identity of its own (the operator's) binds its
/// paths as they are.
pub(super) fn reachable(run_dir: &Path, launch: &Launch, container: &ContainerLaunch) -> Result<Reached, String> {
    static STAGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut container = container.clone();
    let mut held = Vec::new();
    let Some(identity) = &launch.run_as else { return Ok(Reached { container, held }) };
    let dir = run_dir.join(STAGED_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let mut reach = |path: &str| -> Result<String, String> {
        let fd = with_fs_identity(identity, || open_path(path))?.map_err(|e| format!("cannot bind {path} into the container as uid {}: {e}", identity.uid))?;
        let n = STAGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let staged = dir.join(format!("{}.{n}", super::own_pid()));
        let staged = stage(&fd, &staged).map_err(|e| format!("cannot bind {path} into the container: {e}"))?;
        let source = staged.path.display().to_string();
        held.push(staged);
        Ok(source)
    };
    for mount in &mut container.mounts {
        let mut parts: Vec<String> = mount.split(':').map(str::to_string).collect();
        parts[0] = reach(&parts[0])?;
        *mount = parts.join(":");
    }
    if container.workdir.is_none() && launch.workdir != "/" {
        let source = reach(&launch.workdir)?;
        container.mounts.push(format!("{source}:{}", launch.workdir));
    }
    Ok(Reached { container, held })
}

/// Where a GPU task's container finds the node's NVIDIA driver libraries and tools: the
/// directories NVIDIA's CUDA images put on `LD_LIBRARY_PATH` and `PATH`.
const DRIVER_LIB_DIR: &str = "/usr/local/nvidia/lib64";
const DRIVER_BIN_DIR: &str = "/usr/local/nvidia/bin";

/// The user-space halves of the NVIDIA driver a CUDA program loads, by library name: they
/// must match the node's kernel module, so they come from the node, never from the image.
const DRIVER_LIBRARIES: [&str; 9] = [
    "libcuda.so",
    "libcudadebugger.so",
    "libnvidia-ml.so",
    "libnvidia-ptxjitcompiler.so",
    "libnvidia-nvvm.so",
    "libnvidia-opencl.so",
    "libnvidia-cfg.so",
    "libnvidia-allocator.so",
    "libnvidia-gpucomp.so",
];

/// The driver's tools a GPU task may call.
const DRIVER_TOOLS: [&str; 2] = ["nvidia-smi", "nvidia-debugdump"];

/// (file on the node, path inside) for each driver library in `ldconfig_cache` (the text of
/// `ldconfig -p`: `NAME (libc6,x86-64) => PATH`) under the name programs load it by, and each
/// driver tool found in `bin_dirs`.
pub(super) fn driver_files(ldconfig_cache: &str, bin_dirs: &[&Path]) -> Vec<(String, String)> {
    let arch = if cfg!(target_arch = "aarch64") { "AArch64" } else { "x86-64" };
    let mut files: Vec<(String, String)> = Vec::new();
    for line in ldconfig_cache.lines() {
        let Some((name, path)) = line.trim().split_once(" => ") else { continue };
        let (name, flags) = name.split_once(' ').unwrap_or((name, ""));
        // Versioned names only (libcuda.so.1): the bare development link is not what loads.
        let wanted = DRIVER_LIBRARIES.iter().any(|lib| name.strip_prefix(lib).is_some_and(|rest| rest.starts_with('.')));
        if wanted && flags.contains(arch) && !files.iter().any(|(_, inside)| inside.ends_with(&format!("/{name}"))) {
            files.push((path.to_string(), format!("{DRIVER_LIB_DIR}/{name}")));
        }
    }
    for tool in DRIVER_TOOLS {
        if let Some(found) = bin_dirs.iter().map(|d| d.join(tool)).find(|p| p.is_file()) {
            files.push((found.display().to_string(), format!("{DRIVER_BIN_DIR}/{tool}")));
        }
    }
    files
}

/// This node's driver files (see [`driver_files`]), read once per launcher.
fn node_driver_files() -> &'static [(String, String)] {
    static FILES: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        let cache = ["/sbin/ldconfig", "/usr/sbin/ldconfig"]
            .iter()
            .find_map(|p| std::process::Command::new(p).arg("-p").output().ok())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        driver_files(&cache, &[Path::new("/usr/bin"), Path::new("/usr/local/bin"), Path::new("/bin")])
    })
}

/// Puts the driver's directories on a GPU container's `LD_LIBRARY_PATH` and `PATH` (`env`:
/// its `KEY=VALUE` strings), after what they hold, where they are not yet.
pub(super) fn with_driver_paths(env: &mut Vec<serde_json::Value>) {
    for (key, dir) in [("LD_LIBRARY_PATH", DRIVER_LIB_DIR), ("PATH", DRIVER_BIN_DIR)] {
        let prefix = format!("{key}=");
        match env.iter_mut().find(|kv| kv.as_str().is_some_and(|s| s.starts_with(&prefix))) {
            Some(kv) => {
                let value = kv.as_str().unwrap_or_default()[prefix.len()..].to_string();
                if !value.split(':').any(|d| d == dir) {
                    let joined = if value.is_empty() { dir.to_string() } else { format!("{value}:{dir}") };
                    *kv = serde_json::Value::String(format!("{prefix}{joined}"));
                }
            }
            None => env.push(serde_json::Value::String(format!("{prefix}{dir}"))),
        }
    }
}

/// The runtime this launcher starts containers with. On a hybrid node crun runs in a mount
/// namespace of the launcher's own without the empty v2 tree it refuses; runc where that
/// namespace cannot be made.
pub(super) fn choose_runtime() -> Option<Runtime> {
    let chosen = crate::images::runtime()?;
    // SAFETY: geteuid only reads this process's credentials.
    let root = unsafe { libc::geteuid() } == 0;
    if chosen.name != "crun" || !root || !hybrid_with_empty_unified_tree() {
        return Some(chosen);
    }
    match hide_unified_tree() {
        Ok(()) => Some(chosen),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "tidepool-launcher: crun cannot run on this hybrid cgroup layout ({e}); containers use runc");
            crate::images::runc().or(Some(chosen))
        }
    }
}

impl Launcher {
    /// Starts a task in its image: its bundle's config.json written beside it, then the OCI
    /// runtime, as the launcher (it makes the container; the task inside runs as its identity).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn spawn_container(
        &mut self,
        spec: &LaunchSpec,
        dir: &Path,
        container: &tidepool_api::ContainerLaunch,
        cgroup: Option<&crate::cgroup::TaskCgroup>,
        (program, args): (String, Vec<String>),
        stdout: &File,
        stderr: &File,
    ) -> Result<i32, String> {
        let launch = &spec.launch;
        let user = user_of(launch);
        let mut inside = vec![program];
        inside.extend(args);
        let Reached { mut container, held } = reachable(&self.run_dir, launch, container)?;
        if launch.script.is_some() {
            // The script is bound in on the container's own /tmp, readable by its identity.
            use std::os::unix::fs::PermissionsExt;
            let script = dir.join(rundir::SCRIPT_FILE);
            std::os::unix::fs::chown(&script, Some(user.0), Some(user.1)).map_err(|e| format!("script: {e}"))?;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o500)).map_err(|e| format!("script: {e}"))?;
            container.mounts.push(format!("{}:{}:ro", script.display(), SCRIPT_INSIDE));
            inside = vec![SCRIPT_INSIDE.to_string()];
        }
        let devices = gpu_devices(Path::new("/dev"), &launch.gpus);
        let driver = if devices.is_empty() { &[][..] } else { node_driver_files() };
        container.mounts.extend(driver.iter().map(|(source, destination)| format!("{source}:{destination}:ro")));
        let id = container_id(launch);
        self.bind_sources.insert(id.clone(), held);
        let run = RuntimeRun { bundle: dir, id: &id, image: &container.image, passed: None, stdout, stderr };
        let started = self.run_runtime(spec, cgroup, &devices, run, |cgroups_path| {
            let mut config = config(launch, &container, &inside, user, &devices, cgroups_path);
            if !driver.is_empty() {
                if let Some(env) = config["process"]["env"].as_array_mut() {
                    with_driver_paths(env);
                }
            }
            config
        });
        // A container that never started has no end to release its staged sources at.
        if started.is_err() {
            self.bind_sources.remove(&id);
        }
        started
    }

    /// Writes a bundle's config.json (made by `config_of` from the cgroup path the runtime is
    /// to make, if any) and starts the runtime on it; the runtime's pid. crun is started
    /// inside the task's cgroup and told to make none (the container is born in the task's,
    /// and crun skips making a child in every v1 hierarchy); runc, and crun when the task
    /// has device nodes to allow, make the container a child of the task's cgroup from the
    /// launcher's own.
    pub(super) fn run_runtime(
        &mut self,
        spec: &LaunchSpec,
        cgroup: Option<&crate::cgroup::TaskCgroup>,
        devices: &[(String, u64, u64)],
        run: RuntimeRun<'_>,
        config_of: impl FnOnce(Option<&str>) -> serde_json::Value,
    ) -> Result<i32, String> {
        let runtime = self.runtime.clone().ok_or("cannot start a container: no OCI runtime (crun, runc) is installed on this node")?;
        let born_in_task_cgroup = runtime.name == "crun" && devices.is_empty();
        let cgroups_path = if born_in_task_cgroup { None } else { cgroup.and_then(|c| spec.cgroup.container_path(&c.name)) };
        let config = config_of(cgroups_path.as_deref());
        let text = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
        std::fs::write(run.bundle.join("config.json"), text).map_err(|e| format!("cannot write the container's config.json: {e}"))?;
        let state = self.run_dir.join(RUNTIME_STATE_DIR).display().to_string();
        let path = runtime.path.display().to_string();
        let bundle = run.bundle.display().to_string();
        let mut words = vec![path.as_str(), "--root", &state];
        if born_in_task_cgroup {
            words.push("--cgroup-manager=disabled");
        }
        words.push("run");
        if run.passed.is_some() {
            words.extend(["--preserve-fds", "1"]);
        }
        words.extend(["--bundle", &bundle, run.id]);
        let argv: Vec<CString> = words.iter().map(|s| CString::new(*s).map_err(|_| "a path holds a NUL byte".to_string())).collect::<Result<_, _>>()?;
        let envp = vec![CString::new("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").map_err(|e| e.to_string())?];
        let file = CString::new(path.clone()).map_err(|e| e.to_string())?;
        let workdir = CString::new(bundle.clone()).map_err(|e| e.to_string())?;
        let task_procs = match cgroup {
            Some(c) if born_in_task_cgroup => c.join_files(),
            _ => &[],
        };
        // Born outside the task's cgroup, the container would escape its limits: it does not start.
        if let Err(e) = self.join(task_procs) {
            self.go_home();
            return Err(format!("cannot start image {}: cannot enter its cgroup, so its limits would not hold: {e}", run.image));
        }
        let spawned = with_umask(TASK_UMASK, || spawn_passing(&file, &argv, &envp, &workdir, run.passed, run.stdout, run.stderr));
        self.go_home();
        spawned.map_err(|e| format!("cannot start {path} for image {}: {e}", run.image))
    }

    /// Removes what the OCI runtime left of a container it could not clean up itself (it was
    /// killed): its state, so the id could serve again.
    pub(super) fn forget_container(&mut self, id: &str) {
        self.bind_sources.remove(id);
        let state = self.run_dir.join(RUNTIME_STATE_DIR);
        if state.join(id).exists() {
            let Some(runtime) = &self.runtime else { return };
            let _ = std::process::Command::new(&runtime.path)
                .arg("--root")
                .arg(&state)
                .args(["delete", "--force", id])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty scratch directory named for `what`, where the test runs as root (it makes
    /// devices or acts as another uid); none elsewhere.
    fn root_scratch(what: &str) -> Option<std::path::PathBuf> {
        // SAFETY: geteuid only reads this process's credentials.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let dir = std::env::temp_dir().join(format!("tidepool-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Some(dir)
    }

    #[test]
    fn a_task_gets_exactly_its_gpus_device_nodes() {
        let Some(dev) = root_scratch("dev") else { return };
        for (name, minor) in [("nvidia0", 0), ("nvidia1", 1), ("nvidia2", 2), ("nvidiactl", 255)] {
            let path = std::ffi::CString::new(dev.join(name).display().to_string()).unwrap();
            // SAFETY: mknod on a path we own in a fresh directory.
            assert_eq!(unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(195, minor)) }, 0);
        }
        std::fs::write(dev.join("nvidia-uvm"), "not a device").unwrap();
        let found = gpu_devices(&dev, &[2, 0]);
        assert_eq!(found, [("/dev/nvidia2".to_string(), 195, 2), ("/dev/nvidia0".into(), 195, 0), ("/dev/nvidiactl".into(), 195, 255)]);
        assert!(gpu_devices(&dev, &[]).is_empty(), "a task without GPUs gets no device");
        let _ = std::fs::remove_dir_all(&dev);
    }

    #[test]
    fn a_gpu_container_gets_the_nodes_driver_under_the_names_programs_load() {
        let bin = std::env::temp_dir().join(format!("tidepool-driver-{}", std::process::id()));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("nvidia-smi"), "").unwrap();
        let arch = if cfg!(target_arch = "aarch64") { "AArch64" } else { "x86-64" };
        let cache = format!(
            "9 libs found in cache `/etc/ld.so.cache'\n\
             \tlibz.so.1 (libc6,{arch}) => /lib/libz.so.1\n\
             \tlibnvidia-ml.so.1 (libc6,{arch}) => /usr/lib/nvidia/libnvidia-ml.so.1\n\
             \tlibnvidia-ml.so (libc6,{arch}) => /usr/lib/nvidia/libnvidia-ml.so\n\
             \tlibcuda.so.1 (libc6,{arch}) => /usr/lib/nvidia/libcuda.so.1\n\
             \tlibcuda.so.1 (libc6) => /usr/lib32/libcuda.so.1\n\
             \tlibcudart.so.12 (libc6,{arch}) => /usr/lib/libcudart.so.12\n\
             \tlibnvidia-mlx.so.1 (libc6,{arch}) => /usr/lib/libnvidia-mlx.so.1\n"
        );
        let files = driver_files(&cache, &[Path::new("/nonexistent"), &bin]);
        assert_eq!(
            files,
            [
                ("/usr/lib/nvidia/libnvidia-ml.so.1".to_string(), "/usr/local/nvidia/lib64/libnvidia-ml.so.1".to_string()),
                ("/usr/lib/nvidia/libcuda.so.1".into(), "/usr/local/nvidia/lib64/libcuda.so.1".into()),
                (bin.join("nvidia-smi").display().to_string(), "/usr/local/nvidia/bin/nvidia-smi".into()),
            ],
            "the driver alone (not the CUDA runtime an image brings), this architecture's, versioned names"
        );
        assert!(driver_files("", &[]).is_empty(), "a node without the driver binds nothing");
        let mut env = vec![serde_json::json!("PATH=/usr/bin"), serde_json::json!("LD_LIBRARY_PATH=/usr/local/cuda/lib64")];
        with_driver_paths(&mut env);
        with_driver_paths(&mut env);
        assert_eq!(env, [serde_json::json!("PATH=/usr/bin:/usr/local/nvidia/bin"), serde_json::json!("LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/nvidia/lib64")]);
        let _ = std::fs::remove_dir_all(&bin);
    }

    #[test]
    fn a_bind_source_swapped_for_a_link_after_it_was_reached_still_binds_what_was_reached() {
        use std::os::unix::fs::PermissionsExt;
        let Some(base) = root_scratch("reach") else { return };
        let (own, other, run_dir) = (base.join("own"), base.join("other"), base.join("run"));
        for d in [&own, &other, &run_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(own.join("mine"), "").unwrap();
        // World-readable, but inside a directory only root may enter.
        let inner = other.join("inner");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::write(inner.join("secret"), "").unwrap();
        std::os::unix::fs::chown(&own, Some(5001), Some(5001)).unwrap();
        std::os::unix::fs::chown(&base, Some(5001), Some(5001)).unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut launch = crate::executor::double::launch(0, &["true"]);
        launch.run_as = Some(tidepool_api::RunAs { uid: 5001, gid: 5001, groups: vec![] });
        let container = |source: &Path| ContainerLaunch {
            image: "x".into(),
            mounts: vec![format!("{}:/data", source.display())],
            workdir: Some("/".into()),
            shm_bytes: 1 << 20,
            rootfs: "/nonexistent".into(),
            image_env: vec![],
            digest: String::new(),
            isolated_network: false,
            task_env_wins: vec![],
            registry_auth: None,
        };
        let refused = reachable(&run_dir, &launch, &container(&inner)).err().unwrap_or_default();
        assert!(refused.contains("as uid 5001") && refused.contains("Permission denied"), "{refused}");

        let reached = reachable(&run_dir, &launch, &container(&own)).unwrap();
        // The owner swaps the directory for a link to what it may not reach, before the
        // runtime binds: the staged source still holds what was reached.
        std::fs::rename(&own, base.join("own.before")).unwrap();
        std::os::unix::fs::symlink(&inner, &own).unwrap();
        let source = reached.container.mounts[0].split(':').next().unwrap().to_string();
        assert!(source.starts_with(&run_dir.display().to_string()), "{source}");
        let names: Vec<String> = std::fs::read_dir(&source).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["mine"]);
        drop(reached);
        assert!(!Path::new(&source).exists(), "a staged source is unmounted and removed with its container");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn the_image_path_wins_and_the_task_env_is_kept() {
        let mut launch = Launch {
            attempt: tidepool_api::AttemptRef { job_id: 7, index: 3, attempt: 2 },
            env: [("PATH".to_string(), "/home/me/bin".to_string()), ("X".into(), "1".into())].into(),
            workdir: "/work".into(),
            ..crate::executor::double::launch(3, &["true"])
        };
        let container = ContainerLaunch {
            image: "x".into(),
            mounts: vec!["/data:/data:ro".into()],
            workdir: None,
            shm_bytes: 1 << 30,
            rootfs: "/cache/rootfs".into(),
            image_env: vec!["PATH=/opt/bin:/bin".into(), "X=0".into()],
            digest: String::new(),
            isolated_network: false,
            task_env_wins: vec![],
            registry_auth: None,
        };
        launch.container = Some(container.clone());
        let c = config(&launch, &container, &["sh".into()], (5001, 5002, &[7]), &[], Some("/tidepool/t1/ctr"));
        assert_eq!(c["process"]["env"], serde_json::json!(["PATH=/opt/bin:/bin", "X=1"]));
        assert_eq!(c["process"]["user"], serde_json::json!({"uid": 5001, "gid": 5002, "additionalGids": [7]}));
        assert_eq!(c["process"]["cwd"], "/work");
        assert_eq!(c["linux"]["cgroupsPath"], "/tidepool/t1/ctr");
        let mounts = c["mounts"].as_array().unwrap();
        assert!(mounts.iter().any(|m| m["destination"] == "/dev/shm" && m["options"].as_array().unwrap().contains(&serde_json::json!("size=1073741824"))));
        assert!(mounts.iter().any(|m| m["destination"] == "/work" && m["source"] == "/work"));
        assert!(mounts.iter().any(|m| m["destination"] == "/data" && m["options"].as_array().unwrap().contains(&serde_json::json!("ro"))));
        assert!(!c["linux"]["namespaces"].as_array().unwrap().iter().any(|n| n["type"] == "network"), "the host's network");
        assert_eq!(container_id(&launch), "tidepool-7.3.2");
    }
}
