//! `tidepool-bench recovery`: how long the server takes to start again on a journal that holds
//! a million tasks, each dispatched and ended (two million events), next to the time a plain
//! reading of the same rows takes (the floor any replay must pay).

use crate::line;
use std::time::Instant;
use tidepool_store::{Ending, Event, Journal, Outcome, SqliteStore};

/// Runs the benchmark with `n_tasks` tasks.
pub async fn run(json: bool, n_tasks: u32) -> Result<u8, String> {
    let dir = std::env::temp_dir().join(format!("tidepool-bench-recovery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let db = dir.join("journal.db");
    let written = Instant::now();
    {
        let mut journal = SqliteStore::open(&db).map_err(|e| e.to_string())?;
        let spec = serde_json::json!({"command": ["true"], "array": format!("0-{}", n_tasks - 1), "workdir": "/"}).to_string();
        journal.append(&[Event::JobSubmitted { job_id: 1, at_ms: 1, spec }]).map_err(|e| e.to_string())?;
        let chunk = 50_000;
        let mut start = 0;
        while start < n_tasks {
            let end = (start + chunk).min(n_tasks);
            let mut events = Vec::with_capacity(2 * (end - start) as usize);
            for index in start..end {
                events.push(Event::TaskDispatched { job_id: 1, index, attempt: 1, node: "node0001".into(), at_ms: 2, gpus: 0 });
                events.push(Event::TaskEnded {
                    job_id: 1,
                    index,
                    attempt: 1,
                    outcome: Outcome::Succeeded,
                    ending: Ending { exit_code: Some(0), signal: None, started_ms: 2, cpu_ms: 1, peak_mem_bytes: 1 << 20 },
                    at_ms: 3,
                    message: None,
                });
            }
            journal.append(&events).map_err(|e| e.to_string())?;
            start = end;
        }
    }
    let write_s = written.elapsed().as_secs_f64();
    // The floor: reading every row back without applying anything.
    let floor = Instant::now();
    let journal = SqliteStore::open(&db).map_err(|e| e.to_string())?;
    let mut n_events = 0u64;
    journal.replay(&mut |_| n_events += 1).map_err(|e| e.to_string())?;
    let floor_s = floor.elapsed().as_secs_f64();
    drop(journal);
    let open = || {
        let config = tidepool_server::Config::new(dir.clone(), "http://127.0.0.1:0".into());
        let started = Instant::now();
        let shared = tidepool_server::state::Shared::open(config).map_err(|e| e.to_string())?;
        let took = started.elapsed().as_secs_f64();
        let succeeded = shared.job_views(false, None).0.first().map_or(0, |j| j.counts.succeeded);
        if succeeded != n_tasks {
            return Err(format!("restart found {succeeded} succeeded tasks, expected {n_tasks}"));
        }
        Ok::<_, String>((shared, took))
    };
    // First start: the whole journal; then the snapshot a long replay leaves behind.
    let (shared, full_replay_s) = open()?;
    shared.take_snapshot().await.map_err(|e| e.to_string())?;
    drop(shared);
    let (_, restart_s) = open()?;
    let _ = std::fs::remove_dir_all(&dir);
    if json {
        line(&serde_json::json!({"tasks": n_tasks, "events": n_events, "restart_s": restart_s, "full_replay_s": full_replay_s, "read_floor_s": floor_s, "journal_write_s": write_s}).to_string());
    } else {
        line(&format!("journal of {n_tasks} tasks ({n_events} events) written in {write_s:.2} s"));
        line(&format!("{:<32} {:>10}", "figure", "seconds"));
        line(&format!("{:<32} {:>10.3}", "server restart from a snapshot", restart_s));
        line(&format!("{:<32} {:>10.3}", "replay of the whole journal", full_replay_s));
        line(&format!("{:<32} {:>10.3}", "reading the rows alone (floor)", floor_s));
        line(&format!("{:<32} {:>10.2}", "snapshot restart / floor", restart_s / floor_s.max(1e-9)));
    }
    Ok(0)
}
