//! The reactor in process: a real server state over a SQLite journal in a directory of its own,
//! agents as sessions driven by hand, no binary and no network.

use crate::state::Shared;
use crate::Config;
use tidepool_api::{RegisterRequest, SubmitRequest};

/// A directory removed when the test ends.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("tidepool-server-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn node(name: &str, cpus: u64) -> RegisterRequest {
    RegisterRequest {
        name: name.into(),
        pool: "local".into(),
        cpu_millis: cpus * 1000,
        mem_bytes: 1 << 30,
        gpus: 0,
        features: vec![],
        resources: Default::default(),
        overflow: false,
        running: vec![],
        finished: vec![],
    }
}

fn array(range: &str) -> SubmitRequest {
    SubmitRequest { command: vec!["true".into()], array: Some(range.into()), workdir: Some("/tmp".into()), ..SubmitRequest::default() }
}

#[tokio::test]
async fn a_failed_journal_append_takes_the_dispatches_back() {
    let dir = Dir::new("undo");
    let shared = Shared::open(Config::new(dir.0.clone(), "http://127.0.0.1:1".into())).unwrap();
    let session = shared.on_register(node("n1", 2)).await.unwrap().session;
    let job = shared.on_submit(array("0-3")).await.unwrap();

    shared.writer_for_tests().fail_next.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(shared.schedule_pass().await.is_err(), "the append failed");
    let view = shared.job_view(job, false).unwrap();
    assert_eq!((view.counts.running, view.counts.pending), (0, 4), "nothing runs without its row: {view:?}");

    // The next pass places them again, journaled, and the agent gets exactly those.
    assert_eq!(shared.schedule_pass().await.unwrap(), 2);
    let work = shared.on_poll(session).await.unwrap();
    assert_eq!(work.launch.len(), 2);
    let view = shared.job_view(job, true).unwrap();
    assert_eq!(view.counts.running, 2);
    drop(shared);

    // What a restart replays agrees with what ran.
    let reopened = Shared::open(Config::new(dir.0.clone(), "http://127.0.0.1:1".into())).unwrap();
    let replayed = reopened.job_view(job, false).unwrap();
    assert_eq!((replayed.counts.running, replayed.counts.pending), (2, 2), "{replayed:?}");
}
