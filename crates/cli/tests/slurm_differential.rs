//! Sbatch scripts in the styles HPC centres publish (`tests/slurm_scripts/`), each submitted to
//! a real Slurm and to Tidepool, and compared: accepted or refused, the `SLURM_*` variables the
//! tasks print, the files they write (names and contents), the order dependencies impose, and the
//! final state of every job and array task. Runs when `TIDEPOOL_TEST_SLURM=1` (`.ci/run` starts a
//! single-host Slurm with `bench/slurm/start.sh` and exports `SLURM_CONF`).
//!
//! Both run on the same shape: one node of Slurm's core count, partition `debug`, as root (the
//! admin's work under `tidepool up`, as Slurm runs the submitting user's). Values that name
//! hosts, times or job ids are made comparable first; what differs on purpose is listed in
//! [`DELIBERATE`] with the reason.
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Env, BIN};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Variables left out of the comparison, and why.
const NOT_COMPARED: &[(&str, &str)] = &[
    ("SLURM_CONF", "the path of Slurm's own configuration file; Tidepool has none"),
    ("SLURM_TASK_PID", "a process id"),
    ("SLURM_PRIO_PROCESS", "the submitting shell's nice value, which Tidepool does not carry"),
    ("SLURM_GTIDS", "slurmstepd's internal global task ids"),
    ("SLURM_WORKING_CLUSTER", "slurmctld's address and protocol version"),
    ("SLURM_NODE_ALIASES", "addresses of Slurm's cloud nodes"),
    ("SLURM_TOPOLOGY_ADDR", "Slurm's topology plugin"),
    ("SLURM_TOPOLOGY_ADDR_PATTERN", "Slurm's topology plugin"),
    ("SLURM_JOB_QOS", "Slurm's QOS, which Tidepool's tiers replace"),
    ("SLURM_JOB_ACCOUNT", "an accounting database's account; Tidepool's project is TIDEPOOL_PROJECT"),
];

/// Differences kept on purpose: (script, what differs, why).
const DELIBERATE: &[(&str, &str, &str)] = &[
    (
        "34-dependency-missing",
        "verdict",
        "Slurm takes a job id it does not hold for one already purged and lets the job run; Tidepool \
         knows every id it ever issued and refuses one it never issued (ids it forgot are settled \
         from the journal, as Slurm would wish it could)",
    ),
    (
        "35-too-many-cpus",
        "verdict",
        "a job no node of the fleet can ever hold is refused at submission, as Slurm does with \
         EnforcePartLimits=ALL; CI's Slurm keeps the default (NO) and leaves it pending forever",
    ),
    (
        "36-nodes-two",
        "verdict",
        "as 35: two nodes on a one-node fleet can never start; Slurm's default leaves it pending \
         with reason PartitionNodeLimit",
    ),
];

#[derive(Debug, Default, PartialEq)]
struct Outcome {
    accepted: bool,
    files: BTreeMap<String, String>,
    states: Vec<String>,
}

fn slurm_wanted() -> bool {
    if std::env::var("TIDEPOOL_TEST_SLURM").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("skipped: start Slurm with bench/slurm/start.sh, export SLURM_CONF and TIDEPOOL_TEST_SLURM=1");
    false
}

fn scripts() -> Vec<(String, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slurm_scripts");
    let mut all: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    all.sort();
    all
}

/// Slurm's node: its core count, as `slurmd -C` reports it.
fn slurm_cores() -> u32 {
    let out = Command::new("slurmd").arg("-C").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().find_map(|w| w.strip_prefix("CPUs=")?.parse().ok()).unwrap()
}

/// The same input on both sides: each case in a directory of its own, a variable to see exported.
fn submit_all(root: &Path, sbatch: &mut dyn FnMut(&Path) -> Output) -> BTreeMap<String, bool> {
    let mut accepted = BTreeMap::new();
    for (name, path) in scripts() {
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&path, dir.join("job.sh")).unwrap();
        let out = sbatch(&dir);
        accepted.insert(name, out.status.success());
    }
    accepted
}

/// Every file a case wrote, its name and text made comparable.
fn files_of(dir: &Path, ids: &BTreeSet<u64>) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "job.sh" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        files.insert(comparable(&name, ids, dir), comparable(&text, ids, dir));
    }
    files
}

/// `text` with the case's job ids, its directory and site names replaced by placeholders, the
/// variables not compared dropped, and `SLURM_*` listings sorted.
fn comparable(text: &str, ids: &BTreeSet<u64>, dir: &Path) -> String {
    let dir = dir.display().to_string();
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some((name, _)) = line.split_once('=') {
            if NOT_COMPARED.iter().any(|(n, _)| *n == name) {
                continue;
            }
            if name == "SLURM_CLUSTER_NAME" {
                lines.push(format!("{name}=<cluster>"));
                continue;
            }
        }
        let line = without_times(&line.replace(&dir, "<dir>"));
        let mut out = String::new();
        let mut digits = String::new();
        for c in line.chars().chain(std::iter::once('\n')) {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            if !digits.is_empty() {
                let is_id = digits.parse::<u64>().is_ok_and(|n| ids.contains(&n));
                out.push_str(if is_id { "<id>" } else { &digits });
                digits.clear();
            }
            if c != '\n' {
                out.push(c);
            }
        }
        lines.push(out);
    }
    lines.join("\n")
}

/// `line` with each ISO 8601 time (`2026-12-07T21:40:26`) as `<time>`.
fn without_times(line: &str) -> String {
    let bytes = line.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:dd";
    let mut out = String::new();
    let mut i = 0;
    while i < line.len() {
        let fits = bytes.len() - i >= shape.len()
            && shape.iter().zip(&bytes[i..]).all(|(want, got)| if *want == b'd' { got.is_ascii_digit() } else { want == got });
        if fits {
            out.push_str("<time>");
            i += shape.len();
        } else {
            let c = line[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Slurm's records of the jobs run in `root`: (case, job ids, state and exit code).
fn slurm_records(root: &Path) -> Vec<(String, Vec<u64>, String)> {
    let out = Command::new("scontrol").args(["show", "job", "-o"]).output().unwrap();
    let mut records = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let field = |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}="))).unwrap_or("").to_string();
        let Some(case) = Path::new(&field("WorkDir")).strip_prefix(root).ok().map(|p| p.display().to_string()) else { continue };
        let mut ids = vec![field("JobId").parse().unwrap()];
        ids.extend(field("ArrayJobId").parse::<u64>().ok());
        let state = field("JobState");
        let detail = if state == "PENDING" { field("Reason") } else { field("ExitCode") };
        records.push((case, ids, format!("{state} {detail}")));
    }
    records
}

/// Tidepool's records of the jobs run in `root`, one per task, as [`slurm_records`].
fn tidepool_records(env: &Env, root: &Path) -> Vec<(String, Vec<u64>, String)> {
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&env.ok(&["jobs", "--all", "--json"])).unwrap();
    let mut records = Vec::new();
    for job in jobs {
        let Ok(case) = Path::new(job["workdir"].as_str().unwrap()).strip_prefix(root).map(|p| p.display().to_string()) else { continue };
        let id = job["id"].as_u64().unwrap();
        let held: Vec<u64> = (id..id + job["n_tasks"].as_u64().unwrap().max(1)).collect();
        if job["state"] == "pending" {
            let reason = job["pending_code"].as_str().unwrap_or("").to_string();
            records.push((case, held, format!("PENDING {reason}")));
            continue;
        }
        let sacct = env.ok(&["sacct", "-j", &id.to_string(), "-P", "-n", "-o", "JobID,State,ExitCode"]);
        for row in sacct.lines() {
            let fields: Vec<&str> = row.split('|').collect();
            records.push((case.clone(), held.clone(), format!("{} {}", fields[1], fields[2])));
        }
    }
    records
}

/// True while a job in this state may still change: running, or pending for a reason that passes.
fn still_coming(state: &str) -> bool {
    const PASSING: &[&str] = &["", "Priority", "Resources", "Dependency", "JobArrayTaskLimit", "None", "BeginTime"];
    match state.split_once(' ') {
        Some(("PENDING", reason)) => PASSING.contains(&reason),
        _ => ["RUNNING", "COMPLETING", "CONFIGURING"].iter().any(|s| state.starts_with(s)),
    }
}

/// Waits until every job in `root` has ended or can never start; then cancels those.
fn settle(records: &mut dyn FnMut() -> Vec<(String, Vec<u64>, String)>, cancel: &mut dyn FnMut(u64)) -> Vec<(String, Vec<u64>, String)> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let now = records();
        if !now.iter().any(|(_, _, state)| still_coming(state)) {
            // Jobs a job submitted appear by the time it ends; one more look makes sure.
            std::thread::sleep(Duration::from_secs(2));
            let again = records();
            if again.len() == now.len() {
                for (_, ids, state) in &again {
                    if state.starts_with("PENDING") {
                        cancel(ids[0]);
                    }
                }
                return again;
            }
            continue;
        }
        assert!(Instant::now() < deadline, "jobs still running or waiting: {now:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn outcomes(root: &Path, accepted: &BTreeMap<String, bool>, records: &[(String, Vec<u64>, String)]) -> BTreeMap<String, Outcome> {
    let mut all = BTreeMap::new();
    for (case, accepted) in accepted {
        let mine: Vec<&(String, Vec<u64>, String)> = records.iter().filter(|(c, _, _)| c == case).collect();
        let ids: BTreeSet<u64> = mine.iter().flat_map(|(_, ids, _)| ids.iter().copied()).collect();
        let mut states: Vec<String> = mine.iter().map(|(_, _, s)| s.clone()).collect();
        states.sort();
        let files = files_of(&root.join(case), &ids);
        all.insert(case.clone(), Outcome { accepted: *accepted, files, states });
    }
    all
}

#[test]
fn published_style_sbatch_scripts_behave_as_under_slurm() {
    if !slurm_wanted() {
        return;
    }
    let cases = scripts();
    assert!(cases.len() >= 30, "at least 30 scripts");

    // Slurm, in a directory slurmd (root) reaches.
    let slurm_root = std::env::temp_dir().join(format!("tidepool-diff-slurm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&slurm_root);
    let slurm_accepted = submit_all(&slurm_root, &mut |dir| Command::new("sbatch").arg("--parsable").arg("job.sh").current_dir(dir).env("FOO", "bar").output().unwrap());
    let slurm_records = settle(&mut || slurm_records(&slurm_root), &mut |id| {
        let _ = Command::new("scancel").arg(id.to_string()).status();
    });

    // Tidepool, on the same shape.
    let env = Env::shaped("slurm-diff", slurm_cores(), &["--pool", "debug"]);
    // Job ids well above the small numbers scripts print, as Slurm's (FirstJobId in start.sh).
    let blocker = env.ok(&["submit", "--", "sleep", "600"]);
    let padding = env.ok(&["submit", "--array", "0-99999", "-d", &format!("afterok:{}", blocker.trim()), "--", "true"]);
    env.ok(&["cancel", blocker.trim(), padding.trim()]);
    let tidepool_root = env.dir.join("cases");
    let tidepool_accepted = submit_all(&tidepool_root, &mut |dir| env.cmd(BIN, &["sbatch", "--parsable", "job.sh"]).current_dir(dir).env("FOO", "bar").output().unwrap());
    let tidepool_records = settle(&mut || tidepool_records(&env, &tidepool_root), &mut |id| {
        let _ = env.run(&["cancel", &id.to_string()]);
    });

    let slurm = outcomes(&slurm_root, &slurm_accepted, &slurm_records);
    let tidepool = outcomes(&tidepool_root, &tidepool_accepted, &tidepool_records);
    let mut differences = Vec::new();
    for (case, theirs) in &slurm {
        let ours = &tidepool[case];
        let deliberate = |what: &str| DELIBERATE.iter().any(|(c, w, _)| c == case && *w == what);
        if theirs.accepted != ours.accepted {
            if !deliberate("verdict") {
                differences.push(format!("{case}: Slurm {} it, Tidepool {} it", verdict(theirs.accepted), verdict(ours.accepted)));
            }
            continue;
        }
        if theirs.files != ours.files && !deliberate("files") {
            differences.push(format!("{case}: files differ\n  Slurm:    {:?}\n  Tidepool: {:?}", theirs.files, ours.files));
        }
        if theirs.states != ours.states && !deliberate("states") {
            differences.push(format!("{case}: final states differ\n  Slurm:    {:?}\n  Tidepool: {:?}", theirs.states, ours.states));
        }
    }
    let _ = std::fs::remove_dir_all(&slurm_root);
    assert!(differences.is_empty(), "{} of {} scripts differ:\n{}", differences.len(), slurm.len(), differences.join("\n"));
}

fn verdict(accepted: bool) -> &'static str {
    if accepted {
        "accepted"
    } else {
        "refused"
    }
}
