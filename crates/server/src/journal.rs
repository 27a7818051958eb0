//! The group-commit writer: one thread owns the write connection; whatever events arrive while
//! a transaction commits go into the next one, so many submissions share one fsync.

use crate::error::{Error, Result};
use std::sync::mpsc;
use tidepool_store::{Event, Store};
use tokio::sync::oneshot;

type Batch = (Vec<Event>, oneshot::Sender<std::result::Result<(), String>>);

/// A handle to the writer thread.
#[derive(Clone)]
pub struct JournalWriter {
    tx: mpsc::Sender<Batch>,
    appended: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl JournalWriter {
    /// Starts the writer thread over its own handle on the store.
    pub fn start(mut journal: Box<dyn Store>) -> Result<JournalWriter> {
        let (tx, rx) = mpsc::channel::<Batch>();
        let appended = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = appended.clone();
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batches = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        batches.push(more);
                    }
                    let events: Vec<Event> =
                        batches.iter().flat_map(|(events, _)| events.iter().cloned()).collect();
                    let outcome = journal.append(&events).map_err(|e| e.to_string());
                    if outcome.is_ok() {
                        counter.fetch_add(events.len() as u64, std::sync::atomic::Ordering::SeqCst);
                    }
                    if let Err(e) = &outcome {
                        tracing::error!(error = %e, n_events = events.len(), "journal commit failed");
                    }
                    for (_, ack) in batches {
                        let _ = ack.send(outcome.clone());
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("starting the journal writer: {e}")))?;
        Ok(JournalWriter { tx, appended })
    }

    /// Events committed since this writer started.
    pub fn n_appended(&self) -> u64 {
        self.appended.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Appends events; returns once they are committed.
    pub async fn append(&self, events: Vec<Event>) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let (ack_tx, ack_rx) = oneshot::channel();
        self.tx
            .send((events, ack_tx))
            .map_err(|_| Error::Journal("the journal writer has stopped".into()))?;
        ack_rx
            .await
            .map_err(|_| Error::Journal("the journal writer has stopped".into()))?
            .map_err(Error::Journal)
    }
}
