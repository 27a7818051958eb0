//! The journal's event payload: one JSON document per event, `{"v":1,"e":{"task_ended":{...}}}`.
//! A new kind of event is a new variant here and nothing in any schema; a change to an existing
//! kind is a new version, read beside the old.

use crate::{Ending, Error, Event, Outcome, Result};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The payload version this build writes.
pub(crate) const PAYLOAD_VERSION: u32 = 1;

// Node names are borrowed both ways: written straight from the event, read straight from the
// row's text when it holds no escape.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    v: u32,
    #[serde(borrow)]
    e: Body<'a>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Body<'a> {
    TaskDispatched {
        job_id: u64,
        index: u32,
        attempt: u32,
        #[serde(borrow)]
        node: Cow<'a, str>,
        at_ms: u64,
        #[serde(default, skip_serializing_if = "is_zero")]
        gpus: u64,
    },
    TaskEnded {
        job_id: u64,
        index: u32,
        attempt: u32,
        outcome: OutcomeName,
        exit_code: Option<i32>,
        signal: Option<i32>,
        started_ms: u64,
        cpu_ms: u64,
        peak_mem_bytes: u64,
        at_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
        message: Option<Cow<'a, str>>,
    },
    TaskRequeued { job_id: u64, index: u32, attempt: u32, at_ms: u64 },
    JobCancelled { job_id: u64, index: Option<u32>, at_ms: u64 },
    NodeDrained {
        #[serde(borrow)]
        node: Cow<'a, str>,
        draining: bool,
        at_ms: u64,
    },
}

/// The outcome as journaled: by name, so the core may renumber its own.
#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum OutcomeName {
    Succeeded,
    Failed,
    Cancelled,
    Timeout,
}

impl From<Outcome> for OutcomeName {
    fn from(outcome: Outcome) -> OutcomeName {
        match outcome {
            Outcome::Succeeded => OutcomeName::Succeeded,
            Outcome::Failed => OutcomeName::Failed,
            Outcome::Cancelled => OutcomeName::Cancelled,
            Outcome::Timeout => OutcomeName::Timeout,
        }
    }
}

impl From<OutcomeName> for Outcome {
    fn from(name: OutcomeName) -> Outcome {
        match name {
            OutcomeName::Succeeded => Outcome::Succeeded,
            OutcomeName::Failed => Outcome::Failed,
            OutcomeName::Cancelled => Outcome::Cancelled,
            OutcomeName::Timeout => Outcome::Timeout,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The payload of an event; `None` for a submission, which the journal keeps as a job row.
pub(crate) fn encode(event: &Event) -> Option<String> {
    let body = match *event {
        Event::JobSubmitted { .. } => return None,
        Event::TaskDispatched { job_id, index, attempt, ref node, at_ms, gpus } => Body::TaskDispatched { job_id, index, attempt, node: Cow::Borrowed(node), at_ms, gpus },
        Event::TaskEnded { job_id, index, attempt, outcome, ending, at_ms, ref message } => Body::TaskEnded {
            job_id,
            index,
            attempt,
            outcome: outcome.into(),
            exit_code: ending.exit_code,
            signal: ending.signal,
            started_ms: ending.started_ms,
            cpu_ms: ending.cpu_ms,
            peak_mem_bytes: ending.peak_mem_bytes,
            at_ms,
            message: message.as_deref().map(Cow::Borrowed),
        },
        Event::TaskRequeued { job_id, index, attempt, at_ms } => Body::TaskRequeued { job_id, index, attempt, at_ms },
        Event::JobCancelled { job_id, index, at_ms } => Body::JobCancelled { job_id, index, at_ms },
        Event::NodeDrained { ref node, draining, at_ms } => Body::NodeDrained { node: Cow::Borrowed(node), draining, at_ms },
    };
    // Serialising these plain fields cannot fail; were it to, the event would be lost, so the
    // error is turned into a payload that replay refuses loudly rather than an empty one.
    Some(serde_json::to_string(&Envelope { v: PAYLOAD_VERSION, e: body }).unwrap_or_else(|e| format!("unencodable: {e}")))
}

/// The event of a payload; `seq` names the row in errors.
pub(crate) fn decode(seq: u64, payload: &str) -> Result<Event> {
    let envelope: Envelope = serde_json::from_str(payload).map_err(|e| {
        #[derive(Deserialize)]
        struct VersionOnly {
            v: u32,
        }
        match serde_json::from_str::<VersionOnly>(payload) {
            Ok(VersionOnly { v }) if v != PAYLOAD_VERSION => {
                Error::Corrupt(format!("event {seq}: payload version {v}, this build reads {PAYLOAD_VERSION}"))
            }
            _ => Error::Corrupt(format!("event {seq}: {e}")),
        }
    })?;
    if envelope.v != PAYLOAD_VERSION {
        return Err(Error::Corrupt(format!("event {seq}: payload version {}, this build reads {PAYLOAD_VERSION}", envelope.v)));
    }
    Ok(match envelope.e {
        Body::TaskDispatched { job_id, index, attempt, node, at_ms, gpus } => Event::TaskDispatched { job_id, index, attempt, node: node.into_owned(), at_ms, gpus },
        Body::TaskEnded { job_id, index, attempt, outcome, exit_code, signal, started_ms, cpu_ms, peak_mem_bytes, at_ms, message } => Event::TaskEnded {
            job_id,
            index,
            attempt,
            outcome: outcome.into(),
            ending: Ending { exit_code, signal, started_ms, cpu_ms, peak_mem_bytes },
            at_ms,
            message: message.map(Cow::into_owned),
        },
        Body::TaskRequeued { job_id, index, attempt, at_ms } => Event::TaskRequeued { job_id, index, attempt, at_ms },
        Body::JobCancelled { job_id, index, at_ms } => Event::JobCancelled { job_id, index, at_ms },
        Body::NodeDrained { node, draining, at_ms } => Event::NodeDrained { node: node.into_owned(), draining, at_ms },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_names_its_version_and_kind() {
        let text = encode(&Event::TaskRequeued { job_id: 3, index: 1, attempt: 2, at_ms: 9 });
        assert_eq!(text.as_deref(), Some(r#"{"v":1,"e":{"task_requeued":{"job_id":3,"index":1,"attempt":2,"at_ms":9}}}"#));
    }

    #[test]
    fn a_newer_or_broken_payload_is_an_error_naming_the_row() {
        let newer = decode(7, r#"{"v":2,"e":{"task_exploded":{}}}"#).unwrap_err().to_string();
        assert!(newer.contains("event 7") && newer.contains("version 2"), "{newer}");
        let broken = decode(8, r#"{"v":1,"e":{"task_requeued":{"job_id":3}}}"#).unwrap_err().to_string();
        assert!(broken.contains("event 8") && broken.contains("index"), "{broken}");
    }
}
