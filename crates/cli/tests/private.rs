//! Private by default: after a run of the server, the agent and the gateway, nothing under the
//! data directory is open to group or others, and no token Tidepool knows is in a journal.
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Env;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// Every path under `dir` (symlinks not followed), with its mode.
fn walk(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32, bool)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.file_type().is_symlink() {
                continue;
            }
            if meta.is_dir() {
                stack.push(entry.path());
            }
            found.push((entry.path(), meta.permissions().mode() & 0o7777, meta.is_dir()));
        }
    }
    found
}

fn dump(db: &std::path::Path) -> String {
    let out = Command::new("sqlite3").arg(db).arg(".dump").output().expect("sqlite3 is installed");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn nothing_under_the_data_directory_is_open_to_others_and_no_token_is_journaled() {
    let env = Env::new("private");
    let data = env.dir.join("data");
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_string();
    let join = std::fs::read_to_string(data.join("join.token")).unwrap().trim().to_string();
    env.ok(&["project", "create", "chem"]);
    let chem = env.ok(&["token", "create", "--project", "chem"]).trim().lines().last().unwrap().to_string();
    // A submitter who exported every token, under their own names and another.
    let out = env
        .cmd(common::BIN, &["submit", "--", "sh", "-c", "echo ran"])
        .env("TIDEPOOL_TOKEN", &admin)
        .env("TIDEPOOL_JOIN_TOKEN", &join)
        .env("MY_CHEM_TOKEN", &chem)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let job = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(env.run(&["wait", &job]).status.success());
    let shown = env.ok(&["show", &job, "--json"]);
    // The gateway writes its database too.
    let key = std::fs::read_to_string(data.join("gateway-demo.key")).unwrap();
    let body = r#"{"model":"tidepool-demo","messages":[{"role":"user","content":"hi"}],"max_tokens":4}"#;
    let answered = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("Authorization: Bearer {}", key.trim()), "-H", "Content-Type: application/json", "-d", body])
        .arg(format!("{}/v1/chat/completions", env.gateway_url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&answered.stdout), "200");

    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the data directory is {mode:o}");
    let found = walk(&data);
    assert!(found.iter().any(|(p, _, _)| p.ends_with("journal.db")) && found.iter().any(|(p, _, _)| p.ends_with("gateway.db")), "{found:?}");
    assert!(found.iter().any(|(p, _, _)| p.starts_with(data.join("logs"))), "no task log under the data directory: {found:?}");
    let open: Vec<String> = found.iter().filter(|(_, m, _)| m & 0o077 != 0).map(|(p, m, _)| format!("{} {m:o}", p.display())).collect();
    assert!(open.is_empty(), "open to group or others:\n{}", open.join("\n"));

    for db in ["journal.db", "gateway.db"] {
        let text = dump(&data.join(db));
        for (name, token) in [("admin", &admin), ("join", &join), ("chem", &chem)] {
            assert!(!text.contains(token.as_str()), "the {name} token is in {db}");
        }
    }
    for (name, token) in [("admin", &admin), ("join", &join), ("chem", &chem)] {
        assert!(!shown.contains(token.as_str()), "the {name} token is in show");
    }
}

#[test]
fn an_older_data_directory_open_to_others_is_made_private_at_start() {
    let mut env = Env::new("fix-modes");
    let data = env.dir.join("data");
    env.kill9();
    for (path, _, is_dir) in walk(&data) {
        let mode = if is_dir { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.start("127.0.0.1:0");
    let open: Vec<String> = walk(&data).iter().filter(|(_, m, _)| m & 0o077 != 0).map(|(p, m, _)| format!("{} {m:o}", p.display())).collect();
    assert!(open.is_empty(), "still open:\n{}", open.join("\n"));
    assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
    let log = std::fs::read_to_string(env.dir.join("server.log")).unwrap();
    assert_eq!(log.matches("made it and everything in it owner-only").count(), 1, "one line for the fix: {log}");
}
