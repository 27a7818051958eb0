//! The house rules, checked: every module says what it is, `core` depends on nothing, SQL lives
//! in `store`, serde derives in `api` (with the exceptions named below), and no source file
//! grows past 800 lines.

// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Every `.rs` file under `crates/*/src`, relative to the workspace.
fn sources() -> Vec<(String, String)> {
    let root = workspace();
    let mut found = Vec::new();
    let mut stack = vec![root.join("crates")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(&root).unwrap().display().to_string();
                if rel.split('/').nth(2) == Some("src") {
                    found.push((rel, std::fs::read_to_string(&path).unwrap()));
                }
            }
        }
    }
    found.sort();
    assert!(found.len() > 50, "found only {} sources", found.len());
    found
}

#[test]
fn every_module_opens_with_what_it_is() {
    let missing: Vec<String> = sources().into_iter().filter(|(_, text)| !text.starts_with("//!")).map(|(path, _)| path).collect();
    assert!(missing.is_empty(), "modules without a //! line first: {missing:?}");
}

#[test]
fn core_depends_on_nothing() {
    let manifest = std::fs::read_to_string(workspace().join("crates/core/Cargo.toml")).unwrap();
    let deps: Vec<&str> = manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap_or("")
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    assert!(deps.is_empty(), "core has dependencies: {deps:?}");
}

#[test]
fn sql_is_written_only_in_store() {
    let keywords = ["SELECT ", "INSERT INTO", "CREATE TABLE", "DELETE FROM", "ALTER TABLE"];
    let outside: Vec<String> = sources()
        .into_iter()
        .filter(|(path, _)| !path.starts_with("crates/store/"))
        .filter(|(_, text)| keywords.iter().any(|k| text.contains(k)))
        .map(|(path, _)| path)
        .collect();
    assert!(outside.is_empty(), "SQL outside store: {outside:?}");
}

/// Files outside `api` that derive serde, and why.
const SERDE_OUTSIDE_API: [(&str, &str); 5] = [
    ("crates/store/src/payload.rs", "the journal's event payloads: the store's private on-disk format"),
    ("crates/store/src/snapshot.rs", "the snapshot document: the store's private on-disk format"),
    ("crates/agent/src/rundir.rs", "the launcher's own launch and start lines, between one agent and its launcher"),
    ("crates/agent/src/cgroup.rs", "the cgroup plan, part of the launcher's launch line"),
    ("crates/agent/src/outputs.rs", "the agent's record of output files, read only by that node's agents"),
];

#[test]
fn serde_derives_live_in_api() {
    let outside: Vec<String> = sources()
        .into_iter()
        .filter(|(path, _)| !path.starts_with("crates/api/") && !SERDE_OUTSIDE_API.iter().any(|(p, _)| p == path))
        .filter(|(_, text)| text.lines().any(|l| l.trim_start().starts_with("#[derive(") && (l.contains("Serialize") || l.contains("Deserialize"))))
        .map(|(path, _)| path)
        .collect();
    assert!(outside.is_empty(), "serde derives outside api, not listed with a reason: {outside:?}");
}

/// The most lines a source file may have.
const MAX_LINES: usize = 800;

#[test]
fn no_source_file_grows_past_800_lines() {
    let over: Vec<String> = sources()
        .into_iter()
        .map(|(path, text)| (path, text.lines().count()))
        .filter(|(_, n)| *n > MAX_LINES)
        .map(|(path, n)| format!("{path}: {n} lines, over {MAX_LINES}: split it by what its parts do"))
        .collect();
    assert!(over.is_empty(), "{over:#?}");
}
