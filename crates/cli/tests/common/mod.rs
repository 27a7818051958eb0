//! The test harness: a real `tidepool up` in its own directory, and helpers to drive it.
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tidepool");
/// The benchmarks' program, told to run the `tidepool` above.
pub fn bench() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tidepool-bench"));
    c.env("TIDEPOOL_BIN", BIN);
    c
}

/// True when the tests run as root: only then can a project's tasks run as a uid of their own.
pub fn is_root() -> bool {
    // SAFETY: geteuid only reads this process's credentials.
    unsafe { libc::geteuid() == 0 }
}

/// A `tidepool up` in its own directory, killed when dropped.
pub struct Env {
    pub dir: Scratch,
    pub url: String,
    /// The inference gateway's base URL.
    pub gateway_url: String,
    server: Option<Child>,
    extra_args: Vec<String>,
    agents: Vec<(String, Child)>,
    /// Cores of the local agent.
    pub cpus: u32,
    /// Environment given to every command run against the server (e.g. its CA).
    pub client_env: Vec<(String, String)>,
}

impl Env {
    pub fn new(name: &str) -> Env {
        Env::with_args(name, &[])
    }

    /// A server started with extra `tidepool up` flags.
    pub fn with_args(name: &str, extra: &[&str]) -> Env {
        Env::with_client_env(name, extra, &[])
    }

    /// A server started with extra flags, whose clients get `client_env`.
    pub fn with_client_env(name: &str, extra: &[&str], client_env: &[(&str, &str)]) -> Env {
        Env::listening(name, "127.0.0.1:0", extra, client_env)
    }

    /// A server listening on `listen`, started with extra flags, whose clients get `client_env`.
    pub fn listening(name: &str, listen: &str, extra: &[&str], client_env: &[(&str, &str)]) -> Env {
        let dir = Scratch::new(name);
        let extra_args = extra.iter().map(|s| s.to_string()).collect();
        let client_env = client_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut env = Env { dir, url: String::new(), gateway_url: String::new(), server: None, extra_args, agents: Vec::new(), cpus: 4, client_env };
        env.start(listen);
        env
    }

    /// A server whose local agent offers `cpus` cores, started with extra flags.
    pub fn shaped(name: &str, cpus: u32, extra: &[&str]) -> Env {
        let dir = Scratch::new(name);
        let extra_args = extra.iter().map(|s| s.to_string()).collect();
        let mut env = Env { dir, url: String::new(), gateway_url: String::new(), server: None, extra_args, agents: Vec::new(), cpus, client_env: Vec::new() };
        env.start("127.0.0.1:0");
        env
    }

    /// Starts one more agent, named `name`, dialing this server.
    pub fn add_agent(&mut self, name: &str, extra: &[&str]) {
        let token = std::fs::read_to_string(self.dir.join("data/join.token")).unwrap();
        self.add_agent_with_token(name, token.trim(), extra);
    }

    /// Starts one more agent that joins with `token`.
    pub fn add_agent_with_token(&mut self, name: &str, token: &str, extra: &[&str]) {
        let mut command = Command::new(BIN);
        command.args(["agent", "--server", &self.url]);
        self.add_agent_by(name, command, token, extra);
    }

    /// Starts one more agent that runs as `uid` (not root: it can switch to no other user),
    /// its token file and data directory that user's.
    pub fn add_agent_as(&mut self, name: &str, uid: u32, extra: &[&str]) {
        use std::os::unix::fs::OpenOptionsExt;
        let token = std::fs::read_to_string(self.dir.join("data/join.token")).unwrap();
        let token_file = self.dir.join(format!("join-{name}.token"));
        std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&token_file).unwrap();
        let data_dir = self.dir.join(format!("agent-{name}"));
        std::fs::create_dir_all(&data_dir).unwrap();
        for path in [&token_file, &data_dir] {
            std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
        }
        // The build directory may be closed to other users (a fresh clone under a 0700 temporary
        // directory): the agent runs a copy of the binaries its user can reach.
        let bin_dir = self.dir.join(format!("bin-{uid}"));
        std::fs::create_dir_all(&bin_dir).unwrap();
        let program = bin_dir.join("tidepool");
        std::fs::copy(BIN, &program).unwrap();
        let launcher = Path::new(BIN).with_file_name("tidepool-launcher");
        if launcher.exists() {
            std::fs::copy(&launcher, bin_dir.join("tidepool-launcher")).unwrap();
        }
        let mut command = Command::new("setpriv");
        command.args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups"]).arg(&program).args(["agent", "--server", &self.url]);
        let own = format!("--admin-runs-as={uid}");
        self.add_agent_by(name, command, token.trim(), &[extra, &[own.as_str()]].concat());
    }

    /// Starts one more agent with `command` (the binary and how it reaches the server, e.g.
    /// inside a network namespace), joining with `token`.
    pub fn add_agent_by(&mut self, name: &str, mut command: Command, token: &str, extra: &[&str]) {
        // From a file, as the README says: a token in argv is readable by every user in `ps`.
        let token_file = self.dir.join(format!("join-{name}.token"));
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&token_file).unwrap();
            std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes()).unwrap();
        }
        // The admin's own work runs as root on these agents, as under the `tidepool up` a root
        // test starts; projects' tasks still run as their uids.
        if is_root() && !extra.contains(&"--allow-root-tasks") && !extra.iter().any(|a| a.starts_with("--admin-runs-as")) {
            command.arg("--allow-root-tasks");
        }
        let child = command
            .arg("--join-token-file")
            .arg(&token_file)
            .args(["--name", name])
            .args(["--data-dir", &format!("agent-{name}")])
            .args(extra)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.agents.push((name.to_string(), child));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ok(&["nodes"]).contains(name) {
            assert!(Instant::now() < deadline, "agent {name} did not join");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates project `name` whose tasks run as `uid` (and gid), with a directory of its own
    /// under the test's directory, as a site would give it; its token and that directory.
    pub fn project_with_uid(&self, name: &str, uid: u32) -> (String, String) {
        use std::os::unix::fs::PermissionsExt;
        self.ok(&["project", "create", name, "--uid", &uid.to_string()]);
        let token = self.ok(&["token", "create", "--project", name]).trim().lines().last().unwrap().to_string();
        let area = self.dir.join(format!("{name}-area"));
        std::fs::create_dir_all(&area).unwrap();
        std::os::unix::fs::chown(&area, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(&area, std::fs::Permissions::from_mode(0o700)).unwrap();
        (token, area.display().to_string())
    }

    /// Who submits in tests that cover both ways a task starts: the admin (tasks run as the
    /// user who started `up`) and, as root, a project with a uid of its own (tasks switch to
    /// it); each with its token and a directory its tasks may write in.
    pub fn submitters(&self) -> Vec<(String, String)> {
        let admin = std::fs::read_to_string(self.dir.join("data/admin.token")).unwrap().trim().to_string();
        let mut out = vec![(admin, self.dir.display().to_string())];
        if is_root() {
            out.push(self.project_with_uid("switched", 5601));
        }
        out
    }

    /// Submits `args` as `token`, running in `workdir`; the job id.
    pub fn submit_as(&self, token: &str, workdir: &str, args: &[&str]) -> String {
        let out = self.cmd(BIN, &[&["submit", "-D", workdir], args].concat()).env("TIDEPOOL_TOKEN", token).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// The pid of an agent started with [`Env::add_agent`].
    pub fn agent_pid(&self, name: &str) -> u32 {
        self.agents.iter().find(|(n, _)| n == name).map(|(_, c)| c.id()).expect("no such agent")
    }

    /// Polls `check` every 50 ms until it is true or `secs` pass.
    pub fn eventually(&self, secs: u64, what: &str, mut check: impl FnMut(&Env) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn start(&mut self, listen: &str) {
        let cpus = self.cpus.to_string();
        let mut child = Command::new(BIN)
            .args(["up", "--data-dir", "data", "--listen", listen, "--cpus", &cpus, "--gateway-listen", "127.0.0.1:0"])
            .args(&self.extra_args)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (gtx, grx) = std::sync::mpsc::channel();
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("server.log")).unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                use std::io::Write;
                let _ = writeln!(log, "{line}");
                if let Some(rest) = line.split("API ").nth(1) {
                    let _ = tx.send(rest.split("/api/v1").next().unwrap_or("").to_string());
                }
                if let Some(rest) = line.split("gateway listening on ").nth(1) {
                    let _ = gtx.send(rest.trim().to_string());
                }
            }
        });
        self.url = rx.recv_timeout(Duration::from_secs(30)).expect("server did not start");
        self.gateway_url = grx.recv_timeout(Duration::from_secs(30)).expect("gateway did not start");
        self.server = Some(child);
        self.wait_for_node();
    }

    pub fn wait_for_node(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let out = self.run(&["nodes"]);
            if String::from_utf8_lossy(&out.stdout).lines().count() > 1 {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no node joined");
    }

    /// Stops `tidepool up` as Ctrl-C would, and waits for it to exit; its exit status.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        let mut c = self.server.take().expect("no server");
        let _ = Command::new("kill").args(["-INT", &c.id().to_string()]).status();
        c.wait().unwrap()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.server.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn cmd(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.args(args)
            .current_dir(&self.dir)
            .env("TIDEPOOL_URL", &self.url)
            .env("TIDEPOOL_DATA_DIR", self.dir.join("data"))
            .env_remove("TIDEPOOL_TOKEN");
        for (k, v) in &self.client_env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(BIN, args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn server_pid(&self) -> u32 {
        self.server.as_ref().unwrap().id()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.kill9();
        for (_, a) in &mut self.agents {
            let _ = Command::new("kill").args(["-CONT", &a.id().to_string()]).status();
            let _ = a.kill();
            let _ = a.wait();
        }
        // A launcher outlives its agent and goes on with the tasks queued on its node: it is
        // stopped (SIGTERM ends what it runs and what waits) before the directory goes (or,
        // for a failed test, stays) with `dir`.
        tidepool_agent::rundir::stop_launchers(&self.dir.join("data/agent/run"), Duration::from_secs(10));
    }
}

/// A directory of a test's own under the temporary directory, removed when the test passed
/// (kept for a look when it failed).
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    /// `tidepool-it-PID-NAME`, made afresh.
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tidepool-it-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

pub fn count_lines(path: &Path) -> (usize, usize, Vec<u32>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut seen: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let total = seen.len();
    seen.sort_unstable();
    seen.dedup();
    (total, seen.len(), seen)
}


/// The processes whose command line starts with `marker`: a test's own, whatever else runs.
pub fn pids_of(marker: &str) -> Vec<u32> {
    let out = Command::new("pgrep").args(["-f", &format!("^{marker}")]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// A program of the binary, killed when the test ends (pass or fail), and the directory it ran
/// in, removed after it.
pub struct Program(pub Child, pub Scratch);

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tidepool ARGS` in a directory of its own holding `files`; returns it and the first
/// `n` URLs it logs as `... on http://...`, in order.
pub fn start_program(name: &str, args: &[&str], files: &[(&str, &str)], n: usize) -> (Program, Vec<String>) {
    let dir = Scratch::new(name);
    for (file, text) in files {
        std::fs::write(dir.join(file), text).unwrap();
    }
    let mut child = Command::new(BIN).args(args).current_dir(&dir).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut urls = Vec::new();
    while urls.len() < n {
        let line = lines.next().expect("exited before listening").unwrap();
        if let Some(rest) = line.split(" on http://").nth(1) {
            urls.push(format!("http://{}", rest.trim().trim_end_matches("/metrics")));
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (Program(child, dir), urls)
}

/// One HTTP/1.1 request on its own connection (`Connection: close`), with `headers` (a JSON
/// content type unless they name one): (status, lower-cased head, body). A connection the server
/// closes early gives what was read, status 0 if nothing.
pub fn http(base: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut all_headers = headers.to_vec();
    all_headers.push(("connection", "close"));
    s.write_all(tidepool_gateway::http1::request(method, path, addr, &all_headers, body).as_bytes()).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (tidepool_gateway::http1::status_of(head), head.to_ascii_lowercase(), body.to_string())
}
