//! A store held in memory: the server's in-process test harness runs on it, and it passes the
//! same conformance suite as SQLite. Nothing survives the process.

use crate::snapshot::Snapshot;
use crate::{task_records_of, Catalog, Error, Event, Journal, ProjectRow, Result, Store, TaskRecord, TokenRow};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
struct State {
    jobs: BTreeMap<u64, Event>,
    /// (sequence number, event), in order.
    events: Vec<(u64, Event)>,
    /// The newest snapshot as its stored text, as a backend that stores text keeps it.
    snapshot: Option<(u64, String)>,
    projects: BTreeMap<String, ProjectRow>,
    tokens: Vec<TokenRow>,
    /// Test double: the next append fails as a full disk would make it.
    fail_next_append: bool,
}

/// A store in memory; clones are handles on the same store.
#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Makes the next append fail, as a full disk would.
    pub fn fail_next_append(&self) {
        self.lock().fail_next_append = true;
    }

    /// Cuts the stored snapshot's text in half, as a torn write would leave it.
    pub fn damage_snapshot(&self) {
        if let Some((_, text)) = self.lock().snapshot.as_mut() {
            text.truncate(text.len() / 2);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Journal for MemoryStore {
    fn append(&mut self, events: &[Event]) -> Result<()> {
        let mut state = self.lock();
        if std::mem::take(&mut state.fail_next_append) {
            return Err(Error::Corrupt("database or disk is full (injected)".into()));
        }
        // Checked before anything is kept: all or nothing, as a transaction.
        let mut new_jobs = std::collections::BTreeSet::new();
        for event in events {
            if let Event::JobSubmitted { job_id, .. } = event {
                if state.jobs.contains_key(job_id) || !new_jobs.insert(*job_id) {
                    return Err(Error::Conflict(format!("job {job_id} is already journaled")));
                }
            }
        }
        for event in events {
            if let Event::JobSubmitted { job_id, .. } = event {
                state.jobs.insert(*job_id, event.clone());
            } else {
                let seq = state.events.last().map_or(1, |(seq, _)| seq + 1);
                state.events.push((seq, event.clone()));
            }
        }
        Ok(())
    }

    fn replay_jobs(&self, apply: &mut dyn FnMut(Event)) -> Result<()> {
        let jobs: Vec<Event> = self.lock().jobs.values().cloned().collect();
        jobs.into_iter().for_each(apply);
        Ok(())
    }

    fn replay_events_after(&self, seq: u64, apply: &mut dyn FnMut(Event)) -> Result<()> {
        let events: Vec<Event> = self.lock().events.iter().filter(|(s, _)| *s > seq).map(|(_, e)| e.clone()).collect();
        events.into_iter().for_each(apply);
        Ok(())
    }

    fn last_seq(&self) -> Result<u64> {
        Ok(self.lock().events.last().map_or(0, |(seq, _)| *seq))
    }

    fn n_events(&self) -> Result<u64> {
        Ok(self.lock().events.len() as u64)
    }

    fn save_snapshot(&mut self, seq: u64, _taken_ms: u64, snapshot: &Snapshot) -> Result<()> {
        let mut state = self.lock();
        if state.snapshot.as_ref().is_none_or(|(newer, _)| *newer <= seq) {
            state.snapshot = Some((seq, snapshot.encode()));
        }
        Ok(())
    }

    fn latest_snapshot(&self) -> Result<Option<(u64, Snapshot)>> {
        self.lock().snapshot.as_ref().map(|(seq, text)| Ok((*seq, Snapshot::decode(*seq, text)?))).transpose()
    }

    fn job_submission(&self, job_id: u64) -> Result<Option<(u64, String)>> {
        Ok(match self.lock().jobs.get(&job_id) {
            Some(Event::JobSubmitted { spec, at_ms, .. }) => Some((*at_ms, spec.clone())),
            _ => None,
        })
    }

    fn jobs_page(&self, after_id: u64, since_ms: u64, limit: usize) -> Result<Vec<(u64, u64, String)>> {
        Ok(self
            .lock()
            .jobs
            .range(after_id.saturating_add(1)..)
            .filter_map(|(id, e)| match e {
                Event::JobSubmitted { at_ms, spec, .. } if *at_ms >= since_ms => Some((*id, *at_ms, spec.clone())),
                _ => None,
            })
            .take(limit)
            .collect())
    }

    fn last_job(&self) -> Result<Option<(u64, String)>> {
        Ok(match self.lock().jobs.last_key_value() {
            Some((id, Event::JobSubmitted { spec, .. })) => Some((*id, spec.clone())),
            _ => None,
        })
    }

    fn task_records(&self, job_id: u64) -> Result<Vec<TaskRecord>> {
        let events: Vec<Event> = self.lock().events.iter().filter(|(_, e)| e.job_id() == job_id).map(|(_, e)| e.clone()).collect();
        Ok(task_records_of(events))
    }
}

impl Catalog for MemoryStore {
    fn create_project(&mut self, project: &ProjectRow, _now_ms: u64) -> Result<bool> {
        let mut state = self.lock();
        if state.projects.contains_key(&project.name) {
            return Ok(false);
        }
        state.projects.insert(project.name.clone(), project.clone());
        Ok(true)
    }

    fn projects(&self) -> Result<Vec<ProjectRow>> {
        Ok(self.lock().projects.values().cloned().collect())
    }

    fn insert_token(&mut self, token: &TokenRow, _now_ms: u64) -> Result<()> {
        let mut state = self.lock();
        if state.tokens.iter().any(|t| t.id == token.id || t.hash == token.hash) {
            return Err(Error::Conflict(format!("token {} is already stored", token.id)));
        }
        state.tokens.push(token.clone());
        Ok(())
    }

    fn revoke_token(&mut self, id: &str) -> Result<bool> {
        let mut state = self.lock();
        let found = state.tokens.iter_mut().find(|t| t.id == id);
        Ok(found.map(|t| t.revoked = true).is_some())
    }

    fn tokens(&self) -> Result<Vec<TokenRow>> {
        Ok(self.lock().tokens.clone())
    }
}

impl Store for MemoryStore {
    fn reopen(&self) -> Result<Box<dyn Store>> {
        Ok(Box::new(self.clone()))
    }
}
