//! The conformance suite every backend must pass: `run(fresh)` checks a backend whose stores
//! come from `fresh` (each call a new, empty store) and returns what failed, by check.
//! SQLite and the in-memory store run it in `tests/conformance.rs`; a new backend adds one line.

use crate::snapshot::{JobTasks, RunningAttempt, Snapshot};
use crate::{Ending, Error, Event, Outcome, ProjectRow, Store, TokenRow};
use tidepool_core::TaskState;

type Check = fn(Box<dyn Store>) -> std::result::Result<(), String>;

/// Every check, by name.
pub const CHECKS: [(&str, Check); 9] = [
    ("replays jobs before their events", replays_jobs_before_their_events),
    ("a failed batch writes nothing", a_failed_batch_writes_nothing),
    ("every event kind reads back exactly", every_event_kind_reads_back_exactly),
    ("events after a position", events_after_a_position),
    ("task records keep the last attempt", task_records_keep_the_last_attempt),
    ("snapshots keep the newest", snapshots_keep_the_newest),
    ("a second handle sees commits", a_second_handle_sees_commits),
    ("projects", projects),
    ("tokens", tokens),
];

/// Runs every check on a fresh store; the failures, each named by its check.
pub fn run(fresh: &mut dyn FnMut() -> Box<dyn Store>) -> Vec<String> {
    CHECKS.iter().filter_map(|(name, check)| check(fresh()).err().map(|e| format!("{name}: {e}"))).collect()
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn ok<T>(r: crate::Result<T>) -> std::result::Result<T, String> {
    r.map_err(|e| e.to_string())
}

fn job(job_id: u64) -> Event {
    Event::JobSubmitted { job_id, at_ms: 10 + job_id, spec: format!("{{\"job\":{job_id}}}") }
}

fn dispatched(job_id: u64, index: u32, attempt: u32, node: &str) -> Event {
    Event::TaskDispatched { job_id, index, attempt, node: node.into(), at_ms: 100, gpus: 0 }
}

fn ended(job_id: u64, index: u32, attempt: u32, outcome: Outcome) -> Event {
    Event::TaskEnded { job_id, index, attempt, outcome, ending: Ending { exit_code: Some(0), cpu_ms: 7, ..Ending::default() }, at_ms: 200, message: None }
}

fn replay_all(store: &dyn Store) -> std::result::Result<Vec<Event>, String> {
    let mut seen = Vec::new();
    ok(store.replay(&mut |e| seen.push(e)))?;
    Ok(seen)
}

fn replays_jobs_before_their_events(mut store: Box<dyn Store>) -> std::result::Result<(), String> {
    ok(store.append(&[job(1), dispatched(1, 5, 1, "n")]))?;
    ok(store.append(&[
        Event::TaskRequeued { job_id: 1, index: 5, attempt: 1, at_ms: 12 },
        job(2),
        dispatched(1, 5, 2, "m"),
        Event::NodeDrained { node: "m".into(), draining: true, at_ms: 13 },
        Event::JobCancelled { job_id: 2, index: None, at_ms: 15 },
        job(3),
    ]))?;
    let seen = replay_all(store.as_ref())?;
    let expected = vec![
        job(1),
        dispatched(1, 5, 1, "n"),
        Event::TaskRequeued { job_id: 1, index: 5, attempt: 1, at_ms: 12 },
        dispatched(1, 5, 2, "m"),
        Event::NodeDrained { node: "m".into(), draining: true, at_ms: 13 },
        job(2),
        Event::JobCancelled { job_id: 2, index: None, at_ms: 15 },
        job(3),
    ];
    ensure!(seen == expected, "replayed {seen:?}");
    let mut jobs = Vec::new();
    ok(store.replay_jobs(&mut |e| jobs.push(e.job_id())))?;
    ensure!(jobs == [1, 2, 3], "jobs {jobs:?}");
    ensure!(ok(store.job_spec(2))?.as_deref() == Some("{\"job\":2}"), "job 2's spec");
    ensure!(ok(store.job_spec(9))?.is_none(), "a job never submitted has a spec");
    ensure!(ok(store.last_job())?.map(|(id, _)| id) == Some(3), "the last job");
    let page: Vec<u64> = ok(store.jobs_page(1, 0, 10))?.into_iter().map(|(id, _, _)| id).collect();
    ensure!(page == [2, 3], "the page after job 1: {page:?}");
    let page: Vec<u64> = ok(store.jobs_page(0, 13, 1))?.into_iter().map(|(id, _, _)| id).collect();
    ensure!(page == [3], "one job submitted at 13 or later: {page:?}");
    ensure!(ok(store.job_submission(2))?.is_some_and(|(at, _)| at > 0), "job 2's submission time");
    Ok(())
}

fn a_failed_batch_writes_nothing(mut store: Box<dyn Store>) -> std::result::Result<(), String> {
    ok(store.append(&[job(1)]))?;
    let again = store.append(&[dispatched(1, 0, 1, "n"), job(4), job(1)]);
    ensure!(matches!(again, Err(Error::Conflict(_))), "a job submitted twice: {again:?}");
    ensure!(ok(store.n_events())? == 0, "events of the refused batch were kept");
    ensure!(ok(store.job_spec(4))?.is_none(), "a job of the refused batch was kept");
    ensure!(replay_all(store.as_ref())? == vec![job(1)], "replay after a refused batch");
    Ok(())
}

fn every_event_kind_reads_back_exactly(mut store: Box<dyn Store>) -> std::result::Result<(), String> {
    let big = 1u64 << 62;
    let events = vec![
        Event::JobSubmitted { job_id: 1, at_ms: big, spec: "{\"command\":[\"echo\",\"é \\\" \\n\"]}".into() },
        Event::TaskDispatched { job_id: 1, index: u32::MAX, attempt: u32::MAX, node: "nœud-1".into(), at_ms: big, gpus: u64::MAX },
        Event::TaskEnded {
            job_id: 1,
            index: u32::MAX,
            attempt: u32::MAX,
            outcome: Outcome::Timeout,
            ending: Ending { exit_code: Some(-1), signal: Some(9), started_ms: big, cpu_ms: big, peak_mem_bytes: big },
            at_ms: big,
            message: None,
        },
        Event::TaskEnded { job_id: 1, index: 0, attempt: 1, outcome: Outcome::Failed, ending: Ending::default(), at_ms: 1, message: Some("cannot open \"/x\" as uid 5001: é".into()) },
        Event::TaskEnded { job_id: 1, index: 0, attempt: 2, outcome: Outcome::Cancelled, ending: Ending::default(), at_ms: 1, message: None },
        ended(1, 0, 3, Outcome::Succeeded),
        Event::TaskRequeued { job_id: 1, index: 7, attempt: 3, at_ms: 0 },
        Event::JobCancelled { job_id: 1, index: Some(7), at_ms: 2 },
        Event::JobCancelled { job_id: 1, index: None, at_ms: 3 },
        Event::NodeDrained { node: "n".into(), draining: false, at_ms: 4 },
    ];
    ok(store.append(&events))?;
    let seen = replay_all(store.as_ref())?;
    ensure!(seen == events, "wrote {events:?}\nread {seen:?}");
    Ok(())
}

fn events_after_a_position(mut store: Box<dyn Store>) -> std::result::Result<(), String> {
    ensure!(ok(store.last_seq())? == 0, "an empty journal's last position");
    ok(store.append(&[job(1), dispatched(1, 0, 1, "a"), dispatched(1, 1, 1, "b")]))?;
    let mark = ok(store.last_seq())?;
    ok(store.append(&[ended(1, 0, 1, Outcome::Succeeded), job(2), dispatched(2, 0, 1, "c")]))?;
    ensure!(ok(store.last_seq())? > mark, "the position did not advance");
    let mut after = Vec::new();
    ok(store.replay_events_after(mark, &mut |e| after.push(e)))?;
    ensure!(after == vec![ended(1, 0, 1, Outcome::Succeeded), dispatched(2, 0, 1, "c")], "after {mark}: {after:?}");
    let mut all = Vec::new();
    ok(store.replay_events_after(0, &mut |e| all.push(e)))?;
    ensure!(all.len() == 4 && ok(store.n_events())? == 4, "all events: {all:?}");
    Ok(())
}

fn task_records_keep_the_last_attempt(mut store: Box<dyn Store>) -> std::result::Result<(), String> {
    ok(store.append(&[
        job(1),
        job(2),
        dispatched(1, 5, 1, "n"),
        dispatched(2, 5, 1, "other job"),
        Event::TaskRequeued { job_id: 1, index: 5, attempt: 1, at_ms: 12 },
        dispatched(1, 5, 2, "m"),
        ended(1, 5, 1, Outcome::Failed),
        ended(1, 5, 2, Outcome::Succeeded),
        dispatched(1, 2, 1, "n"),
        Event::JobCancelled { job_id: 1, index: Some(9), at_ms: 20 },
    ]))?;
    let recs = ok(store.task_records(1))?;
    let indexes: Vec<u32> = recs.iter().map(|r| r.index).collect();
    ensure!(indexes == [2, 5, 9], "indexes {indexes:?}");
    let five = &recs[1];
    ensure!(five.attempt == 2 && five.node.as_deref() == Some("m"), "task 5: {five:?}");
    ensure!(five.outcome == Some(Outcome::Succeeded) && five.ending.map(|e| e.cpu_ms) == Some(7), "task 5's end: {five:?}");
    ensure!(recs[0].outcome.is_none() && recs[0].dispatched_ms == Some(100), "task 2: {:?}", recs[0]);
    ensure!(recs[2].node.is_none(), "a task cancelled before it ran: {:?}", recs[2]);
    ensure!(ok(store.task_records(3))?.is_empty(), "a job never journaled has records");
    Ok(())
}

fn snapshots_keep_the_newest(mut store: Box<dyn Store>) -> std::result::Result<(), String> {
    ensure!(ok(store.latest_snapshot())?.is_none(), "a new store has a snapshot");
    let snap = |draining: &str| Snapshot {
        jobs: vec![JobTasks {
            job_id: 1,
            runs: vec![(TaskState::Running, 1), (TaskState::Pending, 3)],
            next_fresh: 1,
            requeued: vec![],
            attempts: vec![],
            running: vec![RunningAttempt { position: 0, node: "n".into(), attempt: 1, started_ms: 5, checkpoint_ms: 0, gpus: 0b1010 }],
            ended_ms: None,
        }],
        draining: vec![draining.into()],
        cancel_pending: vec![(1, 0, 1)],
        preempt_pending: vec![],
        forgotten: vec![(2, 9)],
    };
    ok(store.save_snapshot(3, 1, &snap("a")))?;
    ok(store.save_snapshot(5, 2, &snap("b")))?;
    ok(store.save_snapshot(4, 3, &snap("c")))?;
    let latest = ok(store.latest_snapshot())?;
    ensure!(latest == Some((5, snap("b"))), "latest {latest:?}");
    Ok(())
}

fn a_second_handle_sees_commits(mut store: Box<dyn Store>) -> std::result::Result<(), String> {
    let mut writer = ok(store.reopen())?;
    ok(writer.append(&[job(1), dispatched(1, 0, 1, "n")]))?;
    ensure!(replay_all(store.as_ref())?.len() == 2, "the first handle does not see the second's commit");
    ok(store.append(&[ended(1, 0, 1, Outcome::Succeeded)]))?;
    ensure!(ok(writer.n_events())? == 2, "the second handle does not see the first's commit");
    Ok(())
}

fn projects(mut store: Box<dyn Store>) -> std::result::Result<(), String> {
    let chem = ProjectRow { name: "chem".into(), quota_millis: Some(4000), borrow_millis: None, share: 2, uid: Some(5001), gid: Some(5002), groups: vec![100, 4000000000] };
    let bio = ProjectRow { name: "bio".into(), quota_millis: None, borrow_millis: Some(1000), share: 1, uid: None, gid: None, groups: vec![] };
    ensure!(ok(store.create_project(&chem, 1))?, "a new project was refused");
    ensure!(ok(store.create_project(&bio, 2))?, "a second project was refused");
    let again = ProjectRow { share: 9, ..chem.clone() };
    ensure!(!ok(store.create_project(&again, 3))?, "a project created twice");
    let all = ok(store.projects())?;
    ensure!(all == vec![bio, chem], "projects by name: {all:?}");
    Ok(())
}

fn tokens(mut store: Box<dyn Store>) -> std::result::Result<(), String> {
    let token = |id: &str, hash: &str, project: &str| TokenRow { id: id.into(), hash: hash.into(), project: project.into(), revoked: false };
    ok(store.insert_token(&token("t1", "h1", "chem"), 1))?;
    ok(store.insert_token(&token("t2", "h2", ""), 2))?;
    let reused = store.insert_token(&token("t3", "h1", "bio"), 3);
    ensure!(matches!(reused, Err(Error::Conflict(_))), "a hash stored twice: {reused:?}");
    ensure!(ok(store.revoke_token("t1"))?, "revoking a token");
    ensure!(!ok(store.revoke_token("nope"))?, "revoking a token that does not exist");
    let all = ok(store.tokens())?;
    ensure!(all == vec![TokenRow { revoked: true, ..token("t1", "h1", "chem") }, token("t2", "h2", "")], "tokens {all:?}");
    Ok(())
}
