//! Task logs, read from the node that wrote them: the server never opens a task's output path.
//!
//! A client's read is cut into pieces of at most [`PIECE`] bytes; each piece is handed to the
//! node's agent on its long poll ([`tidepool_api::LogRead`]) and comes back on
//! `POST /api/v1/agent/log`. The response streams piece after piece, asking for the next only
//! when the client has taken the last, so a log of any size costs one piece of memory.

use crate::error::{Error, Result};
use crate::state::Shared;
use axum::body::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidepool_api::{LogAnswerQuery, LogRead};
use tokio::sync::oneshot;

/// The most bytes one round trip to an agent carries.
pub const PIECE: u64 = 1 << 20;

/// How long an agent has to answer a piece.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// A piece as the agent read it.
#[derive(Debug)]
pub struct Piece {
    /// Where the bytes start in the file.
    pub start: u64,
    /// The file's size when read.
    pub size: u64,
    /// The bytes.
    pub bytes: Bytes,
}

/// Where an agent's answer to one read goes.
pub type AnswerTo = oneshot::Sender<std::result::Result<Piece, String>>;

/// Reads handed to agents, by request number, with the session that must answer each.
#[derive(Default)]
pub struct Relay {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, (u64, AnswerTo)>>,
}

impl Relay {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (u64, AnswerTo)>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Awaits the answer to read `request` from agent session `session`.
    pub fn expect(&self, request: u64, session: u64, answer: AnswerTo) {
        self.lock().insert(request, (session, answer));
    }

    /// Delivers an agent's answer; false when no read of that number awaits one from `session`
    /// (an agent cannot answer for another node).
    pub fn deliver(&self, q: &LogAnswerQuery, bytes: Bytes) -> bool {
        let mut waiting = self.lock();
        if waiting.get(&q.request).is_none_or(|(session, _)| *session != q.session) {
            return false;
        }
        let Some((_, tx)) = waiting.remove(&q.request) else { return false };
        drop(waiting);
        let answer = match &q.error {
            Some(e) => Err(e.clone()),
            None => Ok(Piece { start: q.start, size: q.size, bytes }),
        };
        let _ = tx.send(answer);
        true
    }
}

/// What a client asked of a task's log.
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    /// The job.
    pub job_id: u64,
    /// The task.
    pub index: u32,
    /// True for standard error.
    pub stderr: bool,
    /// First byte.
    pub offset: u64,
    /// Most bytes in all.
    pub limit: u64,
    /// Start at the last this many lines instead.
    pub tail_lines: Option<u64>,
}

/// One piece of the log, read by the agent of `node`.
pub async fn piece(shared: &Shared, node: &str, w: &Wanted, offset: u64, limit: u64, tail_lines: Option<u64>) -> Result<Piece> {
    let relay = &shared.log_relay;
    let request = relay.next.fetch_add(1, Ordering::Relaxed) + 1;
    let (tx, rx) = oneshot::channel();
    let read = LogRead {
        request,
        job_id: w.job_id,
        index: w.index,
        stream: if w.stderr { "stderr" } else { "stdout" }.to_string(),
        offset,
        limit: limit.min(PIECE),
        tail_lines,
    };
    if !shared.ask_agent(node, read, tx) {
        return Err(Error::Unavailable(format!("the log of {}.{} is on node {node}, which is not connected", w.job_id, w.index)));
    }
    let answered = tokio::time::timeout(ANSWER_WITHIN, rx).await;
    relay.lock().remove(&request);
    match answered {
        Ok(Ok(Ok(piece))) => Ok(piece),
        Ok(Ok(Err(message))) => Err(Error::NotFound(format!("log of {}.{}: {message}", w.job_id, w.index))),
        _ => Err(Error::Unavailable(format!("node {node} did not send the log of {}.{} within {} s", w.job_id, w.index, ANSWER_WITHIN.as_secs()))),
    }
}

/// The first piece and a stream of the rest, up to `w.limit` bytes in all.
pub async fn stream(shared: Arc<Shared>, node: String, w: Wanted) -> Result<(Piece, impl futures_util::Stream<Item = std::result::Result<Bytes, std::io::Error>>)> {
    let first = piece(&shared, &node, &w, w.offset, w.limit, w.tail_lines).await?;
    let sent = first.bytes.len() as u64;
    let next_at = first.start + sent;
    // Pieces after the first stop at the size the file had when the first was read, so a
    // growing log ends the response rather than feeding it forever (`--follow` asks again).
    let end = first.size.min(first.start.saturating_add(w.limit));
    let state = (shared, node, w, next_at, end);
    let rest = futures_util::stream::unfold(state, |(shared, node, w, at, end)| async move {
        if at >= end {
            return None;
        }
        match piece(&shared, &node, &w, at, end - at, None).await {
            Ok(p) if p.bytes.is_empty() => None,
            Ok(p) => {
                let next = p.start + p.bytes.len() as u64;
                Some((Ok(p.bytes), (shared, node, w, next, end)))
            }
            // The status is sent; an error now can only end the body early.
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), (shared, node, w, end, end))),
        }
    });
    Ok((first, rest))
}
