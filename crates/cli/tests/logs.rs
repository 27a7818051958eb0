//! Logs come from the file the task wrote, read by its node's agent: never from a path a client
//! chose, whole or in ranges, in constant memory, followed as they grow.
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Env;
use std::process::Command;

fn as_token(env: &Env, token: &str, args: &[&str]) -> std::process::Output {
    env.cmd(common::BIN, args).env("TIDEPOOL_TOKEN", token).output().unwrap()
}

/// The REST log route's status and body, as curl gets them.
fn rest_log(env: &Env, token: &str, job: &str, query: &str) -> (String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("{}/api/v1/jobs/{job}/tasks/0/log?{query}", env.url))
        .output()
        .unwrap();
    let mut body = out.stdout;
    let at = body.iter().rposition(|b| *b == b'\n').unwrap();
    let code = String::from_utf8_lossy(&body[at + 1..]).to_string();
    body.truncate(at);
    (code, body)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn no_byte_of_a_file_the_task_did_not_write_comes_back() {
    if !common::is_root() {
        eprintln!("skipped: a project's tasks run as its uid, which needs the agent to be root");
        return;
    }
    let env = Env::new("log-paths");
    let (chem, area) = env.project_with_uid("chem", 5201);
    let area = std::path::PathBuf::from(area);
    let secret = format!("secret-{}", std::process::id());
    std::fs::write(area.join("secret.txt"), &secret).unwrap();
    // Each job runs in chem's directory unless it names another.
    let in_area = ["-D", area.to_str().unwrap()];
    let submit = |args: &[&str]| {
        let workdir: &[&str] = if args.contains(&"-D") { &[] } else { &in_area };
        let out = as_token(&env, &chem, &[&["submit"][..], workdir, args].concat());
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let job = String::from_utf8(out.stdout).unwrap().trim().to_string();
        as_token(&env, &chem, &["wait", &job]);
        job
    };
    let mut read_back = Vec::new();
    let mut check = |job: &str, what: &str| {
        let cli = as_token(&env, &chem, &["logs", job]);
        read_back.extend_from_slice(&cli.stdout);
        read_back.extend_from_slice(&cli.stderr);
        for query in ["", "stream=stderr", "offset=0&limit=100000", "tail=5"] {
            let (_, body) = rest_log(&env, &chem, job, query);
            read_back.extend_from_slice(&body);
        }
        for forbidden in ["PATH=", "TIDEPOOL", &secret, "tpa_", "tpj_"] {
            assert!(!contains(&read_back, forbidden), "{what}: {forbidden} came back: {}", String::from_utf8_lossy(&read_back));
        }
    };

    // The server's (or the agent's) own environment.
    let environ = submit(&["--output", "/proc/self/environ", "--", "true"]);
    check(&environ, "/proc/self/environ");
    // Climbing out of the working directory to a file that holds a secret: the task truncated it
    // and wrote nothing, so nothing comes back, not what was there before.
    std::fs::create_dir_all(area.join("a/b/c")).unwrap();
    let climbed = submit(&["-D", area.join("a/b/c").to_str().unwrap(), "--output", "../../../secret.txt", "--", "true"]);
    std::fs::write(area.join("secret-again.txt"), &secret).unwrap();
    check(&climbed, "../../..");
    // A symlink at the output path is not written through, and one put there afterwards is not
    // read through.
    std::os::unix::fs::symlink(area.join("secret-again.txt"), area.join("planted.out")).unwrap();
    let planted = submit(&["--output", "planted.out", "--", "sh", "-c", "echo mine"]);
    check(&planted, "a planted symlink");
    assert_eq!(std::fs::read_to_string(area.join("secret-again.txt")).unwrap(), secret, "written through a link");
    let swapped = submit(&["--output", "swapped.out", "--", "sh", "-c", "echo mine"]);
    assert_eq!(as_token(&env, &chem, &["logs", &swapped]).stdout, b"mine\n");
    std::fs::remove_file(area.join("swapped.out")).unwrap();
    std::os::unix::fs::symlink(area.join("secret-again.txt"), area.join("swapped.out")).unwrap();
    check(&swapped, "a symlink swapped in afterwards");
    // Or another file put in its place.
    std::fs::remove_file(area.join("swapped.out")).unwrap();
    std::fs::copy(area.join("secret-again.txt"), area.join("swapped.out")).unwrap();
    check(&swapped, "a file swapped in afterwards");
}

#[test]
fn logs_come_in_ranges_tails_and_follow_and_say_when_they_are_empty() {
    let env = Env::new("log-ranges");
    let token = std::fs::read_to_string(env.dir.join("data/admin.token")).unwrap();
    let token = token.trim();
    let job = env.ok(&["submit", "--", "sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done"]);
    let job = job.trim();
    assert!(env.run(&["wait", job]).status.success());
    assert_eq!(env.ok(&["logs", job]), "line1\nline2\nline3\nline4\nline5\n");
    assert_eq!(env.ok(&["logs", job, "--tail", "2"]), "line4\nline5\n");
    let (code, body) = rest_log(&env, token, job, "offset=6&limit=12");
    assert_eq!((code.as_str(), body.as_slice()), ("200", &b"line2\nline3\n"[..]));
    let (code, _) = rest_log(&env, token, job, "offset=x");
    assert_eq!(code, "400");

    let empty = env.ok(&["submit", "--", "true"]);
    assert!(env.run(&["wait", empty.trim()]).status.success());
    let out = env.run(&["logs", empty.trim()]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"), "{}", String::from_utf8_lossy(&out.stderr));

    // --follow prints what comes as it comes, and returns when the task ends.
    let gate = env.dir.join("gate");
    let script = format!("echo before; while [ ! -e {} ]; do sleep 0.1; done; echo after", gate.display());
    let slow = env.ok(&["submit", "--", "sh", "-c", &script]);
    let mut follow = env.cmd(common::BIN, &["logs", slow.trim(), "--follow"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut stdout = std::io::BufReader::new(follow.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert_eq!(first, "before\n", "what the task wrote so far, while it runs");
    std::fs::write(&gate, "").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "after\n");
    assert!(follow.wait().unwrap().success());
}

/// The peak resident memory of a process, MB.
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap();
    kb / 1024.0
}

#[test]
fn a_gigabyte_log_streams_through_the_api_in_constant_memory() {
    let env = Env::new("log-big");
    let token = std::fs::read_to_string(env.dir.join("data/admin.token")).unwrap();
    let job = env.ok(&["submit", "--", "head", "-c", "1073741824", "/dev/zero"]);
    let job = job.trim();
    assert!(env.run(&["wait", job]).status.success());
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "-H", &format!("Authorization: Bearer {}", token.trim())])
        .arg(format!("{}/api/v1/jobs/{job}/tasks/0/log", env.url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 1073741824");
    // `up` is the server and the agent in one process: neither held the log.
    let peak = peak_rss_mb(env.server_pid());
    assert!(peak < 100.0, "peak RSS {peak:.0} MB reading a 1 GB log");
}
