//! Agents in network namespaces of their own, joined to the server by veth pairs: one is cut
//! off mid-run and comes back; no agent namespace holds a listening socket.
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Env, BIN};
use std::process::Command;
use std::time::Duration;

/// Namespaces and veth pairs made for one test, removed however it ends.
struct Net {
    namespaces: Vec<String>,
}

impl Net {
    fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Namespace `i` with address 10.213.`i`.2, its host side 10.213.`i`.1.
    fn add(&mut self, i: usize) -> (String, String) {
        let tag = std::process::id() % 100_000;
        let ns = format!("tp{tag}n{i}");
        let (host, inside) = (format!("tp{tag}h{i}"), format!("tp{tag}i{i}"));
        Net::ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        Net::ip(&["link", "add", &host, "type", "veth", "peer", "name", &inside]);
        Net::ip(&["link", "set", &inside, "netns", &ns]);
        Net::ip(&["addr", "add", &format!("10.213.{i}.1/24"), "dev", &host]);
        Net::ip(&["link", "set", &host, "up"]);
        Net::ip(&["netns", "exec", &ns, "ip", "addr", "add", &format!("10.213.{i}.2/24"), "dev", &inside]);
        Net::ip(&["netns", "exec", &ns, "ip", "link", "set", &inside, "up"]);
        Net::ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        (ns, host)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and with it the host end.
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

fn tasks(env: &Env, job: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["show", job, "--json", "--tasks"])).unwrap();
    v["tasks"].as_array().unwrap().clone()
}

fn alive(pid: &str) -> bool {
    pid.parse().is_ok_and(tidepool_agent::rundir::process_running)
}

#[test]
fn an_agent_cut_off_by_the_network_loses_its_tasks_and_comes_back_clean() {
    let can = Command::new("ip").args(["netns", "list"]).output().is_ok_and(|o| o.status.success()) && unsafe { libc::geteuid() } == 0;
    assert!(can, "this test needs root and iproute2 (ip netns)");
    let mut env = Env::listening("netns", "0.0.0.0:0", &["--agent-lease", "3"], &[]);
    let port = env.url.rsplit(':').next().unwrap().to_string();
    let token = std::fs::read_to_string(env.dir.join("data/join.token")).unwrap();
    let mut net = Net { namespaces: Vec::new() };
    let mut hosts = Vec::new();
    for i in 0..3 {
        let (ns, host) = net.add(i);
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &ns, BIN, "agent", "--server", &format!("http://10.213.{i}.1:{port}")]);
        env.add_agent_by(&format!("ns{i}"), command, token.trim(), &["--cpus", "2", "--feature", "netns"]);
        hosts.push((ns, host));
    }
    // The tasks run as a project's uid of their own, as on a shared fleet.
    let (token, area) = env.project_with_uid("net", 5401);
    let pids = std::path::Path::new(&area).join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    std::os::unix::fs::chown(&pids, Some(5401), Some(5401)).unwrap();
    let script = format!("echo $$ > {}/$TIDEPOOL_TASK_INDEX.$TIDEPOOL_ATTEMPT; exec sleep 6", pids.display());
    let submitted = env
        .cmd(BIN, &["submit", "-D", &area, "--constraint", "netns", "--array", "0-5", "--", "sh", "-c", &script])
        .env("TIDEPOOL_TOKEN", &token)
        .output()
        .unwrap();
    assert!(submitted.status.success(), "{}", String::from_utf8_lossy(&submitted.stderr));
    let job = String::from_utf8(submitted.stdout).unwrap().trim().to_string();
    env.eventually(30, "six tasks running", |e| tasks(e, &job).iter().filter(|t| t["state"] == "running").count() == 6);
    env.eventually(10, "every task's pid", |_| std::fs::read_dir(&pids).unwrap().count() == 6);

    // Agents dial out; nothing in their namespaces listens, tasks included.
    for (ns, _) in &hosts {
        let out = Command::new("ip").args(["netns", "exec", ns, "ss", "-ltnH"]).output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "", "a listener in {ns}");
    }

    let on_cut: Vec<String> = tasks(&env, &job)
        .iter()
        .filter(|t| t["node"] == "ns0")
        .map(|t| t["index"].to_string())
        .collect();
    assert_eq!(on_cut.len(), 2, "ns0 runs two tasks");
    Net::ip(&["link", "set", &hosts[0].1, "down"]);
    env.eventually(20, "ns0 to be lost", |e| e.ok(&["nodes"]).lines().any(|l| l.starts_with("ns0") && l.contains("down")));
    // Its processes go on inside the partition; it comes back before they end.
    let stale: Vec<String> = on_cut.iter().map(|i| std::fs::read_to_string(pids.join(format!("{i}.1"))).unwrap().trim().to_string()).collect();
    assert!(stale.iter().all(|p| alive(p)), "the cut-off node's tasks still run inside the partition");
    Net::ip(&["link", "set", &hosts[0].1, "up"]);
    env.eventually(20, "ns0 back", |e| e.ok(&["nodes"]).lines().any(|l| l.starts_with("ns0") && !l.contains("down")));
    env.eventually(10, "the stale processes to be killed", |_| stale.iter().all(|p| !alive(p)));

    let wait = env.run(&["wait", &job]);
    assert!(wait.status.success(), "{}", String::from_utf8_lossy(&wait.stderr));
    let done = tasks(&env, &job);
    for t in done.iter().filter(|t| on_cut.contains(&t["index"].to_string())) {
        assert_eq!(t["attempt"], 2, "a task of the lost node ran again: {t}");
    }
    let sacct = env.ok(&["sacct", "-j", &job, "-n", "-P", "--format=JobID,State"]);
    assert_eq!(sacct.lines().filter(|l| l.contains("COMPLETED")).count(), 6, "each task counted once: {sacct}");
    assert_eq!(sacct.lines().count(), 6, "{sacct}");
    std::thread::sleep(Duration::from_millis(100));
}
