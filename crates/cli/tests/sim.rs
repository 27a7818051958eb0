//! The simulator through the real binary: a replayed log and the science-burst scenario give
//! the same report for the same seed, byte for byte, and their plots are SVG documents.
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::BIN;
use std::process::Command;

fn sim(args: &[&str]) -> String {
    let out = Command::new(BIN).arg("sim").args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_swf_log_replays_the_same_twice_and_bad_input_is_named() {
    let dir = common::Scratch::new("sim");
    let log = dir.join("log.swf");
    let mut text = String::from("; a small log in the Standard Workload Format\n");
    for i in 0..300u64 {
        let procs = [1, 2, 4, 8, 24, 48][(i % 6) as usize];
        text.push_str(&format!("{} {} -1 {} {procs} -1 -1 {procs} -1 -1 1 1 1 -1 1 -1 -1 -1\n", i + 1, i * 30, 600 + (i * 97) % 3000));
    }
    std::fs::write(&log, text).unwrap();
    let log = log.display().to_string();
    let out = dir.join("plots").display().to_string();
    let args = ["replay", "--swf", &log, "--nodes", "8", "--cores-per-node", "24", "--json", "--out", &out];
    let first = sim(&args);
    assert_eq!(first, sim(&args), "the same input gives the same report");
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["tasks"], 300 + 50, "48-processor jobs run as two-node gangs");
    for key in ["busy_share_while_queued", "node_hours", "makespan_h", "tail_node_hours", "baseline_node_hours"] {
        assert!(v[key].is_number(), "{key} in {v}");
    }
    let svg = std::fs::read_to_string(dir.join("plots/replay-busy.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));

    let bad = Command::new(BIN).args(["sim", "replay", "--swf", "/nonexistent.swf"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--swf /nonexistent.swf"));
    let huge = Command::new(BIN).args(["sim", "replay", "--swf", &log, "--nodes", "1"]).output().unwrap();
    assert_eq!(huge.status.code(), Some(1), "a gang larger than the fleet is refused");
    // A broken number is refused with its line and field, in one line.
    let broken = dir.join("broken.swf");
    std::fs::write(&broken, "; header\n1 0 -1 NaN 4 -1 -1 4 60 -1 1 1 1 -1 1 -1 -1 -1\n").unwrap();
    let bad = Command::new(BIN).args(["sim", "replay", "--swf"]).arg(&broken).output().unwrap();
    let err = String::from_utf8_lossy(&bad.stderr).to_string();
    assert!(bad.status.code() == Some(1) && err.contains("line 2, field 4") && err.trim().lines().count() == 1, "{err}");
    // Whole-node logs: 2 processors are 2 nodes, so 8 such jobs hold the 8 nodes in turn.
    let nodes_log = dir.join("nodes.swf");
    let text: String = (0..8).map(|i| format!("{} 0 -1 100 2 -1 -1 2 200 -1 1 1 1 -1 1 -1 -1 -1\n", i + 1)).collect();
    std::fs::write(&nodes_log, text).unwrap();
    let nodes_log = nodes_log.display().to_string();
    let v: serde_json::Value = serde_json::from_str(&sim(&["replay", "--swf", &nodes_log, "--nodes", "8", "--cores-per-node", "24", "--processors-are-nodes", "--json"])).unwrap();
    assert_eq!(v["tasks"], 16, "each job a gang of 2 whole nodes: {v}");

    // The classic baselines beside Tidepool, per job. A wide job waits behind a long one;
    // narrow short jobs behind it can only be backfilled.
    let mut text = String::from("; head-of-line blocking\n1 0 -1 1000 12 -1 -1 12 1000 -1 1 1 1 -1 1 -1 -1 -1\n2 1 -1 100 48 -1 -1 48 100 -1 1 1 1 -1 1 -1 -1 -1\n");
    for i in 0..20 {
        text.push_str(&format!("{} {} -1 50 4 -1 -1 4 60 -1 1 1 1 -1 1 -1 -1 -1\n", i + 3, 2 + i));
    }
    text.push_str("99 30 -1 0 4 -1 -1 4 60 -1 0 1 1 -1 1 -1 -1 -1\n");
    let blocked = dir.join("blocked.swf");
    std::fs::write(&blocked, text).unwrap();
    let blocked = blocked.display().to_string();
    let v: serde_json::Value = serde_json::from_str(&sim(&["replay", "--swf", &blocked, "--nodes", "2", "--cores-per-node", "24", "--baselines", "--json"])).unwrap();
    assert_eq!(v["jobs_skipped"]["never ran (run time 0 or unknown)"], 1, "{v}");
    let wait = |name: &str| v["per_job"][name]["mean_wait_s"].as_f64().unwrap_or_else(|| panic!("{name} in {v}"));
    assert!(wait("easy") < wait("fcfs") && wait("conservative") < wait("fcfs"), "backfilling helps here: {v}");
    for name in ["tidepool", "fcfs", "easy", "easy_exact", "conservative", "conservative_exact"] {
        let row = &v["per_job"][name];
        assert_eq!(row["jobs"], 22, "{name}: {row}");
        assert!(row["mean_bounded_slowdown"].as_f64().unwrap() >= 1.0 && row["utilisation"].as_f64().unwrap() <= 1.0, "{name}: {row}");
    }
}

#[test]
fn science_burst_is_deterministic_and_beats_its_baseline_on_node_hours() {
    let first = sim(&["science-burst", "--seed", "3", "--json"]);
    assert_eq!(first, sim(&["science-burst", "--seed", "3", "--json"]), "byte for byte");
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["tasks"], 100_000);
    let share = v["busy_share_while_queued"].as_f64().unwrap();
    assert!(share > 0.9, "busy share while queued {share}");
    assert!(v["node_hours"].as_f64().unwrap() < v["baseline_node_hours"].as_f64().unwrap(), "{v}");
    // Compaction moved tail tasks, the baseline none, and that is where the node-hours went.
    assert!(v["moved_tasks"].as_u64().unwrap() > 0 && v["baseline_moved_tasks"] == 0, "{v}");
    assert!(v["tail_node_hours"].as_f64().unwrap() < 0.7 * v["baseline_tail_node_hours"].as_f64().unwrap(), "{v}");
}

#[test]
fn llm_day_keeps_realtime_whole_and_the_gpus_busy() {
    let dir = common::Scratch::new("llm-day");
    let out = dir.display().to_string();
    let first = sim(&["llm-day", "--seed", "1", "--json", "--out", &out]);
    assert_eq!(first, sim(&["llm-day", "--seed", "1", "--json", "--out", &out]), "byte for byte");
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    for key in ["realtime_availability", "gpu_busy_share", "training_gpu_hours", "preemptions", "baseline_realtime_availability", "baseline_gpu_busy_share"] {
        assert!(v[key].is_number(), "{key} in {v}");
    }
    assert!(v["realtime_availability"].as_f64().unwrap() >= 0.999, "{v}");
    assert!(v["gpu_busy_share"].as_f64().unwrap() >= 0.95, "{v}");
    assert!(std::fs::read_to_string(dir.join("llm-day.svg")).unwrap().contains("<polyline"));
    let conf = dir.join("bad.conf");
    std::fs::write(&conf, "gpus = 64\nspeed = 3\n").unwrap();
    let bad = Command::new(BIN).args(["sim", "llm-day", "--config"]).arg(&conf).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("line 2: unknown key 'speed'"));
}

#[test]
fn llm_traces_in_both_public_formats_replay() {
    let dir = common::Scratch::new("llm-trace");
    let (mut jsonl, mut csv) = (String::new(), String::from("TIMESTAMP,ContextTokens,GeneratedTokens\n"));
    for i in 0..3000u64 {
        let (ms, input, output) = (i * 400 + (i * 7919) % 300, 200 + (i * 31) % 4000, 20 + (i * 17) % 400);
        jsonl.push_str(&format!("{{\"timestamp\": {ms}, \"input_length\": {input}, \"output_length\": {output}, \"hash_ids\": [{i}]}}\n"));
        csv.push_str(&format!("2023-11-16 18:{:02}:{:02}.{:03}0000,{input},{output}\n", 15 + ms / 60_000, (ms / 1000) % 60, ms % 1000));
    }
    let (a, b) = (dir.join("trace.jsonl"), dir.join("trace.csv"));
    std::fs::write(&a, jsonl).unwrap();
    std::fs::write(&b, csv).unwrap();
    let run = |path: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&sim(&["replay", "--llm-trace", &path.display().to_string(), "--gpus", "16", "--json"])).unwrap()
    };
    let (from_jsonl, from_csv) = (run(&a), run(&b));
    assert_eq!(from_jsonl, from_csv, "the same requests in either format give the same report");
    assert!(from_jsonl["realtime_availability"].as_f64().unwrap() > 0.99, "{from_jsonl}");
    let bad = Command::new(BIN).args(["sim", "replay", "--llm-trace"]).arg(&b).args(["--gpus", "4"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1), "fewer GPUs than a node");
}

#[test]
fn compare_runs_the_chosen_policy_beside_tidepools() {
    let reactive: serde_json::Value = serde_json::from_str(&sim(&["llm-day", "--compare", "no-forecast", "--json"])).unwrap();
    let fixed: serde_json::Value = serde_json::from_str(&sim(&["llm-day", "--json"])).unwrap();
    assert_eq!(reactive["training_gpu_hours"], fixed["training_gpu_hours"], "Tidepool's column does not change");
    assert_eq!(fixed["baseline_training_gpu_hours"], 0.0, "the static fleet lends nothing");
    // Without a forecast, replicas still lend, but every rise waits a cold start.
    assert!(reactive["baseline_training_gpu_hours"].as_f64().unwrap() > 0.0, "{reactive}");
    assert!(reactive["baseline_training_gpu_hours"].as_f64().unwrap() < reactive["training_gpu_hours"].as_f64().unwrap(), "{reactive}");
    let out = Command::new(BIN).args(["sim", "llm-day", "--compare", "no-compaction"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--compare no-compaction"), "{err}");
}

#[test]
fn a_mooncake_trace_served_request_by_request_meets_fewer_slos_on_fewer_gpus() {
    let dir = common::Scratch::new("serve");
    // Three shared system prompts and each request's own blocks, a request every 10 ms.
    let mut text = String::new();
    for i in 0..1500u64 {
        let shared: &[u64] = match i % 3 { 0 => &[1, 2, 3, 4, 5, 6], 1 => &[10, 11, 12], _ => &[20, 21, 22, 23] };
        let own: Vec<u64> = (0..i % 4).map(|k| 100_000 + i * 10 + k).collect();
        let ids: Vec<u64> = shared.iter().copied().chain(own).collect();
        text.push_str(&format!("{{\"timestamp\": {}, \"input_length\": {}, \"output_length\": {}, \"hash_ids\": {:?}}}\n", i * 10, ids.len() * 512 + 100, 50 + i % 400, ids));
    }
    let trace = dir.join("trace.jsonl");
    std::fs::write(&trace, text).unwrap();
    let trace = trace.display().to_string();
    let v: serde_json::Value = serde_json::from_str(&sim(&["serve", "--llm-trace", &trace, "--gpus", "4", "--json"])).unwrap();
    let met = |g: &str| v["by_gpus"][g]["slo_attainment"].as_f64().unwrap_or_else(|| panic!("{g} in {v}"));
    assert!(met("2") < met("4") && met("4") <= met("8"), "{v}");
    assert!(met("8") > 0.5, "{v}");
    let ideal = v["ideal_prefix_hit_rate"].as_f64().unwrap();
    assert!(ideal > 0.5 && v["by_gpus"]["2"]["prefix_hit_rate"].as_f64().unwrap() <= ideal, "{v}");
    let bad = Command::new(BIN).args(["sim", "serve"]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--llm-trace"));
}
