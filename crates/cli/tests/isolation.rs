//! Nobody let in: project tokens see only their project's jobs; no token, a wrong token or a
//! revoked one gets 401 on every route; admin routes do not exist for project tokens.
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Env;
use std::process::Command;

fn token_for(env: &Env, project: &str) -> (String, String) {
    let out = env.ok(&["token", "create", "--project", project]);
    let id = out.split_whitespace().nth(2).unwrap().to_string();
    (id, out.trim().lines().last().unwrap().to_string())
}

fn as_token(env: &Env, token: &str, args: &[&str]) -> std::process::Output {
    env.cmd(common::BIN, args).env("TIDEPOOL_TOKEN", token).output().unwrap()
}

fn status(env: &Env, method: &str, path: &str, token: Option<&str>) -> String {
    let mut c = Command::new("curl");
    c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method]);
    if let Some(t) = token {
        c.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    if method == "POST" {
        c.args(["-H", "Content-Type: application/json", "-d", "{}"]);
    }
    String::from_utf8(c.arg(format!("{}{path}", env.url)).output().unwrap().stdout).unwrap()
}

#[test]
fn projects_cannot_see_each_others_jobs_and_every_route_wants_a_token() {
    if !common::is_root() {
        eprintln!("skipped: a project's tasks run as its uid, which needs the agent to be root");
        return;
    }
    let env = Env::new("isolation");
    let (chem, chem_area) = env.project_with_uid("chem", 5101);
    env.ok(&["project", "create", "bio"]);
    assert!(!env.run(&["project", "create", "chem"]).status.success(), "duplicate project refused");
    let (_, bio) = token_for(&env, "bio");
    let (revoked_id, revoked) = token_for(&env, "bio");
    env.ok(&["token", "revoke", &revoked_id]);

    let out = as_token(&env, &chem, &["submit", "-D", &chem_area, "--", "sh", "-c", "echo chem-secret-output"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let job = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(as_token(&env, &chem, &["wait", &job]).status.success());
    let shown = as_token(&env, &chem, &["show", &job, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(v["project"], "chem");
    let other = as_token(&env, &chem, &["submit", "--project", "bio", "--", "true"]);
    assert!(!other.status.success(), "a chem token cannot submit for bio");

    for args in [vec!["show", job.as_str()], vec!["cancel", job.as_str()], vec!["logs", job.as_str()], vec!["sacct", "-j", job.as_str()]] {
        let out = as_token(&env, &bio, &args);
        assert!(!out.status.success(), "{args:?} succeeded for another project");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("does not exist"), "{args:?}: {err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("chem-secret-output"));
    }
    let listed = as_token(&env, &bio, &["jobs", "--all", "--json"]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "[]");

    let job_routes = [
        ("GET", format!("/api/v1/jobs/{job}")),
        ("POST", format!("/api/v1/jobs/{job}/cancel")),
        ("GET", format!("/api/v1/jobs/{job}/tasks/0/log")),
    ];
    let admin_routes = [
        ("GET", "/api/v1/projects".to_string()),
        ("POST", "/api/v1/projects".to_string()),
        ("POST", "/api/v1/tokens".to_string()),
        ("GET", "/api/v1/tokens".to_string()),
        ("POST", "/api/v1/tokens/tok_x/revoke".to_string()),
        ("POST", "/api/v1/nodes/x/drain".to_string()),
        ("POST", "/api/v1/nodes/x/resume".to_string()),
    ];
    let open_routes = [("GET", "/api/v1/jobs".to_string()), ("POST", "/api/v1/jobs".to_string()), ("GET", "/api/v1/nodes".to_string())];
    let agent_routes = [("POST", "/api/v1/agent/register"), ("POST", "/api/v1/agent/poll"), ("POST", "/api/v1/agent/report")];
    for (method, path) in job_routes.iter().chain(&admin_routes).chain(&open_routes) {
        assert_eq!(status(&env, method, path, None), "401", "{method} {path} without a token");
        assert_eq!(status(&env, method, path, Some("tpa_wrong")), "401", "{method} {path} with a wrong token");
        assert_eq!(status(&env, method, path, Some(&revoked)), "401", "{method} {path} with a revoked token");
    }
    for (method, path) in &job_routes {
        assert_eq!(status(&env, method, path, Some(&bio)), "404", "{method} {path} with another project's token");
    }
    for (method, path) in &admin_routes {
        assert_eq!(status(&env, method, path, Some(&chem)), "404", "{method} {path} with a project token");
    }
    for (method, path) in agent_routes {
        assert_eq!(status(&env, method, path, None), "401");
        assert_eq!(status(&env, method, path, Some(&chem)), "401", "a project token is not a join token");
    }
}

#[test]
fn a_secret_env_value_reaches_the_task_and_nothing_else() {
    let env = Env::new("secret");
    let secret = "s3cr3t-value-91f2c7";
    let job = env.ok(&[
        "submit", "--secret-env", &format!("API_KEY={secret}"), "--",
        "sh", "-c", "echo the task saw ${#API_KEY} characters",
    ]);
    let job = job.trim().to_string();
    assert!(env.run(&["wait", &job]).status.success());
    assert_eq!(env.ok(&["logs", &job]).trim(), format!("the task saw {} characters", secret.len()));
    let mut answers = String::new();
    for args in [vec!["show", job.as_str(), "--json", "--tasks"], vec!["jobs", "--all", "--json"], vec!["sacct", "-j", job.as_str()]] {
        answers.push_str(&env.ok(&args));
    }
    assert!(!answers.contains(secret), "an answer holds the secret");
    let bad = env.run(&["submit", "--secret-env", &format!("1BAD={secret}"), "--", "true"]);
    assert!(!String::from_utf8_lossy(&bad.stderr).contains(secret), "an error echoes the secret");
    // Everything the server wrote, except the one file meant to keep it.
    let mut stack = vec![env.dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if !path.ends_with("secrets") {
                    stack.push(path);
                }
                continue;
            }
            let bytes = std::fs::read(&path).unwrap_or_default();
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{} holds the secret", path.display());
        }
    }
    let dump = Command::new("sqlite3").arg(env.dir.join("data/journal.db")).arg(".dump").output();
    if let Ok(dump) = dump {
        assert!(!String::from_utf8_lossy(&dump.stdout).contains(secret), "the journal dump holds the secret");
    }
}

#[test]
fn a_revoked_join_token_stops_its_agent_and_its_tasks() {
    let mut env = Env::with_args("join", &["--agent-lease", "3"]);
    let out = env.ok(&["token", "create", "--join"]);
    let id = out.split_whitespace().nth(2).unwrap().to_string();
    let join = out.trim().lines().last().unwrap().to_string();
    assert!(join.starts_with("tpj_"), "{out}");
    env.add_agent_with_token("guest", &join, &["--cpus", "1", "--feature", "guest"]);
    let marker = env.dir.join("guest-task-alive");
    let job = env.ok(&["submit", "--constraint", "guest", "--", "sh", "-c", &format!("while true; do touch {}; sleep 0.2; done", marker.display())]);
    env.eventually(20, "the guest's task to run", |_| marker.exists());
    let listed = env.ok(&["token", "list"]);
    assert!(listed.lines().any(|l| l.starts_with(&id) && l.contains("join") && l.ends_with("no")), "{listed}");
    assert!(!env.run(&["token", "create", "--join", "--project", "x"]).status.success(), "a token is one kind");

    env.ok(&["token", "revoke", &id]);
    assert!(env.ok(&["token", "list"]).lines().any(|l| l.starts_with(&id) && l.ends_with("yes")));
    assert_eq!(status(&env, "POST", "/api/v1/agent/register", Some(&join)), "401", "a revoked join token is refused");
    // The agent learns it at its next poll, stops its task and leaves.
    let pid = env.agent_pid("guest");
    env.eventually(20, "the refused agent to exit", |_| !tidepool_agent::rundir::process_running(pid));
    std::fs::remove_file(&marker).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert!(!marker.exists(), "the task of a refused agent still runs");
    // Its lease ends and the task waits for another node with the feature, as a new attempt.
    env.eventually(20, "the task to be requeued", |e| {
        let v: serde_json::Value = serde_json::from_str(&e.ok(&["show", job.trim(), "--json"])).unwrap();
        v["counts"]["pending"] == 1
    });
}

/// A CA and a certificate for 127.0.0.1 signed by it, made with the openssl command.
fn make_certificates(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(&[&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=tidepool test CA"]].concat());
    openssl(&[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]].concat());
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    openssl(&["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext"]);
}

#[test]
fn over_tls_the_api_agents_and_commands_work_and_plain_http_gets_nothing() {
    let certs = common::Scratch::new("certs");
    make_certificates(&certs);
    let path = |f: &str| certs.join(f).display().to_string();
    let (cert, key, ca) = (path("server.pem"), path("server.key"), path("ca.pem"));
    let env = Env::with_client_env("tls", &["--tls-cert", &cert, "--tls-key", &key, "--ca-cert", &ca], &[("TIDEPOOL_CA_CERT", &ca)]);
    assert!(env.url.starts_with("https://"), "{}", env.url);
    // The local agent reached the server over TLS (the harness waited for its node), and work
    // runs through it.
    let job = env.ok(&["submit", "--", "sh", "-c", "echo over-tls"]);
    assert!(env.run(&["wait", job.trim()]).status.success());
    assert_eq!(env.ok(&["logs", job.trim()]).trim(), "over-tls");
    // Without the CA a client refuses the server, with one readable line.
    let out = env.cmd(common::BIN, &["jobs"]).env_remove("TIDEPOOL_CA_CERT").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // curl: plain HTTP gets no answer; TLS with the CA gets the API, which still wants a token.
    let plain = env.url.replace("https://", "http://");
    let code = |args: &[&str]| String::from_utf8(Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]).args(args).output().unwrap().stdout).unwrap();
    assert_eq!(code(&[&format!("{plain}/api/v1/jobs")]), "000", "plain HTTP must not be answered");
    assert_eq!(code(&["--cacert", &ca, &format!("{}/api/v1/jobs", env.url)]), "401");
    let admin = std::fs::read_to_string(env.dir.join("data/admin.token")).unwrap();
    assert_eq!(code(&["--cacert", &ca, "-H", &format!("Authorization: Bearer {}", admin.trim()), &format!("{}/api/v1/jobs", env.url)]), "200");
}

#[test]
fn a_join_token_stays_out_of_argv_and_argv_use_is_warned() {
    let mut env = Env::new("join-argv");
    let join = std::fs::read_to_string(env.dir.join("data/join.token")).unwrap().trim().to_string();
    env.add_agent("from-file", &["--cpus", "1"]);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", env.agent_pid("from-file"))).unwrap();
    assert!(!cmdline.windows(join.len()).any(|w| w == join.as_bytes()), "the join token is in the agent's argv");

    let mut argv = env
        .cmd(common::BIN, &["agent", "--server", &env.url, "--join-token", &join, "--name", "argv", "--data-dir", "agent-argv", "--cpus", "1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = argv.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if line.contains("--join-token-file") {
                let _ = tx.send(());
            }
        }
    });
    let warned = rx.recv_timeout(std::time::Duration::from_secs(20)).is_ok();
    let _ = argv.kill();
    let _ = argv.wait();
    assert!(warned, "no warning for a join token in argv");
}
