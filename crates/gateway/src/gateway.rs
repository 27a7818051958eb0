//! The gateway's state and handlers.
//!
//! **Invariant**: a request holds one slot of its replica from admission until its answer (or
//! stream) ends, so the admission counts are the replica's real concurrency as seen from here.

use crate::config::GatewayConfig;
use crate::openai::{bad_request, error, model_not_found, model_object, unauthorized};
use crate::request::{BodyError, Endpoint, RequestFacts};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tidepool_core::admission::{admit, Bucket, ReplicaSlots, Verdict};
use tidepool_core::concurrency::ConcurrencyLearner;
use tidepool_core::Tier;
use tokio::sync::Notify;

/// The largest request body taken: a whole batch input file, and room for the form around it.
const MAX_BODY_BYTES: usize = crate::batch::MAX_FILE_BYTES + (1 << 20);

/// Completion tokens assumed when a request sets no limit (for the TPM estimate).
const DEFAULT_COMPLETION_ESTIMATE: u64 = 256;

struct TenantState {
    name: String,
    tier: Tier,
    tpm: Bucket,
    rpm: Bucket,
    prompt_tokens: u64,
    completion_tokens: u64,
    requests: u64,
    refused: u64,
}

struct InFlight {
    id: u64,
    tier: Tier,
    cut: Arc<Notify>,
    cuttable: bool,
}

struct ReplicaState {
    slots: ReplicaSlots,
    in_flight: Vec<InFlight>,
    cut_off: u64,
    /// Present when the best concurrency is learned rather than configured.
    learner: Option<ConcurrencyLearner>,
}

/// The gateway.
pub struct Gateway {
    config: GatewayConfig,
    keys: HashMap<String, usize>,
    /// The tenant of every key that is no other's, when one is open.
    open_tenant: Option<usize>,
    tenants: Mutex<Vec<TenantState>>,
    replicas: Mutex<Vec<ReplicaState>>,
    upstreams: crate::upstream::Upstreams,
    next_id: AtomicU64,
    epoch: Instant,
    store: Option<Mutex<tidepool_store::batches::BatchStore>>,
    cancel_flags: Mutex<HashMap<String, Arc<std::sync::atomic::AtomicBool>>>,
    /// Requests waiting for a slot; a freed slot wakes the highest-tier, oldest one.
    waiters: Mutex<Vec<Waiter>>,
    /// 429s per tier (index = tier order) and per [`Refusal`].
    refusals: [[AtomicU64; Refusal::ALL.len()]; Tier::ALL.len()],
    /// Client connections open now.
    open_connections: std::sync::atomic::AtomicUsize,
    /// Request ids made here: this gateway's start (ns) and a count.
    id_prefix: u64,
    next_request_id: AtomicU64,
}

/// Why a request was answered 429.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// Its tenant's requests per minute.
    Requests,
    /// Its tenant's tokens per minute.
    Tokens,
    /// No slot for its tier within its wait.
    Capacity,
}

impl Refusal {
    const ALL: [Refusal; 3] = [Refusal::Requests, Refusal::Tokens, Refusal::Capacity];

    /// Its label in the metrics.
    fn label(self) -> &'static str {
        match self {
            Refusal::Requests => "rpm",
            Refusal::Tokens => "tpm",
            Refusal::Capacity => "capacity",
        }
    }
}

/// A request waiting for a slot.
struct Waiter {
    id: u64,
    tier: Tier,
    candidates: Vec<usize>,
    wake: Arc<Notify>,
    /// Already woken and not yet back to waiting: a second freed slot goes to the next one.
    woken: bool,
}

/// Takes a waiter off the list however its wait ends.
struct WaiterGuard<'a>(&'a Gateway, u64);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.lock_waiters().retain(|w| w.id != self.1);
    }
}

fn tier_idx(t: Tier) -> usize {
    Tier::ALL.iter().position(|x| *x == t).unwrap_or(0)
}

/// Releases a request's slot when its answer ends, however it ends.
pub(crate) struct SlotGuard {
    gateway: Arc<Gateway>,
    replica: usize,
    id: u64,
    tier: Tier,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut replicas = self.gateway.lock_replicas();
        if let Some(r) = replicas.get_mut(self.replica) {
            r.slots.in_flight[tier_idx(self.tier)] -= 1;
            r.in_flight.retain(|f| f.id != self.id);
        }
        drop(replicas);
        let mut waiters = self.gateway.lock_waiters();
        let next = waiters.iter_mut().filter(|w| !w.woken && w.candidates.contains(&self.replica)).min_by_key(|w| (w.tier, w.id));
        if let Some(w) = next {
            w.woken = true;
            w.wake.notify_one();
        }
    }
}

impl Gateway {
    /// A gateway over `config`.
    pub fn new(config: GatewayConfig) -> Result<Gateway, String> {
        let mut keys = HashMap::new();
        let tenants = config
            .tenants
            .iter()
            .enumerate()
            .map(|(i, t)| {
                for k in &t.keys {
                    keys.insert(k.clone(), i);
                }
                TenantState {
                    name: t.name.clone(),
                    tier: t.tier,
                    tpm: Bucket::per_minute(t.tpm, 0),
                    rpm: Bucket::per_minute(t.rpm, 0),
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    requests: 0,
                    refused: 0,
                }
            })
            .collect();
        let replicas = config
            .replicas
            .iter()
            .map(|r| ReplicaState {
                slots: ReplicaSlots::new(r.best_concurrency, r.max_concurrency),
                in_flight: Vec::new(),
                cut_off: 0,
                learner: r.learn.map(|l| ConcurrencyLearner::new(r.best_concurrency, l.cap)),
            })
            .collect();
        let urls: Vec<(String, Option<String>)> = config.replicas.iter().map(|r| (r.url.clone(), r.api_key.clone())).collect();
        let upstreams = crate::upstream::Upstreams::new(&urls)?;
        let store = match &config.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                let store = tidepool_store::batches::BatchStore::open(&dir.join("gateway.db")).map_err(|e| e.to_string())?;
                Some(Mutex::new(store))
            }
            None => None,
        };
        Ok(Gateway {
            open_tenant: config.tenants.iter().position(|t| t.open),
            config,
            keys,
            tenants: Mutex::new(tenants),
            replicas: Mutex::new(replicas),
            upstreams,
            next_id: AtomicU64::new(1),
            epoch: Instant::now(),
            store,
            open_connections: std::sync::atomic::AtomicUsize::new(0),
            id_prefix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64) & 0xffff_ffff_ffff,
            next_request_id: AtomicU64::new(1),
            cancel_flags: Mutex::new(HashMap::new()),
            waiters: Mutex::new(Vec::new()),
            refusals: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        })
    }

    /// The settings.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// Whether files and batches are kept (the config names a data directory).
    pub(crate) fn has_store(&self) -> bool {
        self.store.is_some()
    }

    /// Runs `f` on the files-and-batches store.
    pub(crate) fn with_store<T>(&self, f: impl FnOnce(&tidepool_store::batches::BatchStore) -> tidepool_store::Result<T>) -> Result<T, String> {
        let store = self.store.as_ref().ok_or("files and batches need data_dir in the gateway config")?;
        let guard = store.lock().unwrap_or_else(|p| p.into_inner());
        f(&guard).map_err(|e| e.to_string())
    }

    /// Batches running, with their cancel flags.
    pub(crate) fn cancel_flags(&self) -> &Mutex<HashMap<String, Arc<std::sync::atomic::AtomicBool>>> {
        &self.cancel_flags
    }

    /// Adds an answer's usage to a tenant's accounts (batch work: not charged to online TPM).
    pub(crate) fn account_usage(&self, tenant: &str, answer: &Value) {
        // TokenUsage also reads a Responses API answer's input and output tokens.
        let usage = answer.get("usage").and_then(|u| <tidepool_api::gateway::TokenUsage as serde::Deserialize>::deserialize(u).ok()).unwrap_or_default();
        let (prompt, completion) = (usage.prompt_tokens, usage.completion_tokens);
        let mut tenants = self.lock_tenants();
        if let Some(t) = tenants.iter_mut().find(|t| t.name == tenant) {
            t.requests += 1;
            t.prompt_tokens += prompt;
            t.completion_tokens += completion;
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock_tenants(&self) -> MutexGuard<'_, Vec<TenantState>> {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_waiters(&self) -> MutexGuard<'_, Vec<Waiter>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_replicas(&self) -> MutexGuard<'_, Vec<ReplicaState>> {
        self.replicas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id of an answer: the client's `x-request-id` when it is a short printable one,
    /// else a new one, unique in this gateway's life.
    pub(crate) fn request_id(&self, given: Option<&HeaderValue>) -> HeaderValue {
        if let Some(v) = given.filter(|v| !v.is_empty() && v.len() <= 256 && v.as_bytes().iter().all(|b| b.is_ascii_graphic())) {
            return v.clone();
        }
        let n = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("req_{:012x}{n:012x}", self.id_prefix)).unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
    }

    /// What each client connection may take.
    pub(crate) fn limits(&self) -> crate::config::Limits {
        crate::config::Limits { max_request_bytes: self.config.max_request_bytes, header_timeout: self.config.header_timeout, idle_timeout: self.config.idle_timeout }
    }

    pub(crate) fn tenant_of(&self, headers: &HeaderMap) -> Option<usize> {
        self.tenant_of_key(headers.get(header::AUTHORIZATION))
    }

    /// The tenant whose key an `authorization` header carries.
    fn tenant_of_key(&self, authorization: Option<&HeaderValue>) -> Option<usize> {
        let key = authorization.and_then(|v| v.to_str().ok()).map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim());
        key.and_then(|k| self.keys.get(k).copied()).or(self.open_tenant)
    }

    /// True when `headers` carry the metrics key.
    fn may_scrape(&self, headers: &HeaderMap) -> bool {
        let Some(want) = &self.config.metrics_key else { return false };
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        given.is_some_and(|g| tidepool_api::same_secret(g.trim(), want))
    }

    /// Logs why a replica failed with its address, and answers the client without it.
    fn upstream_failed(&self, replica: usize, why: &str) -> String {
        let url = self.config.replicas.get(replica).map_or("", |r| r.url.as_str());
        tracing::warn!(replica = url, "upstream failed: {why}");
        let model = self.config.replicas.get(replica).map_or("", |r| r.model.as_str());
        format!("A replica of `{model}` failed to answer; retry later.")
    }

    fn rate_headers(&self, tenant: usize, headers: &mut HeaderMap) {
        let now = self.now_ms();
        let mut tenants = self.lock_tenants();
        let Some(t) = tenants.get_mut(tenant) else { return };
        // Names built once: from a &str at each insert, they showed in profiles.
        const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
        const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
        const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
        const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
        const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
        const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
        let values = [
            (LIMIT_REQUESTS, t.rpm.capacity(), ""),
            (LIMIT_TOKENS, t.tpm.capacity(), ""),
            (REMAINING_REQUESTS, t.rpm.remaining(now), ""),
            (REMAINING_TOKENS, t.tpm.remaining(now), ""),
            (RESET_REQUESTS, t.rpm.ms_to_full(now), "ms"),
            (RESET_TOKENS, t.tpm.ms_to_full(now), "ms"),
        ];
        drop(tenants);
        // The six values are written into one buffer and shared from it: one allocation
        // instead of one or two per header.
        let mut text = bytes::BytesMut::with_capacity(128);
        let mut ends = [0usize; 6];
        for (end, (_, value, unit)) in ends.iter_mut().zip(&values) {
            text.extend_from_slice(itoa::Buffer::new().format(*value).as_bytes());
            text.extend_from_slice(unit.as_bytes());
            *end = text.len();
        }
        let text = text.freeze();
        headers.reserve(values.len());
        let mut start = 0;
        for ((name, _, _), end) in values.into_iter().zip(ends) {
            if let Ok(value) = HeaderValue::from_maybe_shared(text.slice(start..end)) {
                headers.insert(name, value);
            }
            start = end;
        }
    }

    /// A 429 of error type `kind` (OpenAI's: `requests` or `tokens` for the limit that was hit).
    fn too_many(&self, tenant: usize, retry_after_ms: u64, message: &str, kind: &str, code: &str) -> Response {
        let mut response = error(StatusCode::TOO_MANY_REQUESTS, message, kind, None, Some(code));
        let secs = retry_after_ms.div_ceil(1000).max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if let Ok(v) = HeaderValue::from_str(&retry_after_ms.to_string()) {
            response.headers_mut().insert("retry-after-ms", v);
        }
        self.rate_headers(tenant, response.headers_mut());
        response
    }

    /// Admission: a slot on one of `candidates` for a request of `tier`, cutting a lower-tier
    /// stream off if realtime needs it; or how long to wait.
    pub(crate) fn take_slot(self: Arc<Self>, candidates: &[usize], tier: Tier, cuttable: bool) -> Result<(usize, SlotGuard, Arc<Notify>), u64> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let cut = Arc::new(Notify::new());
        let mut replicas = self.lock_replicas();
        let slots: Vec<ReplicaSlots> = candidates
            .iter()
            .map(|i| {
                let r = &replicas[*i];
                let mut slots = r.slots.clone();
                slots.cuttable = [0; 6];
                for f in r.in_flight.iter().filter(|f| f.cuttable) {
                    slots.cuttable[tier_idx(f.tier)] += 1;
                }
                slots
            })
            .collect();
        let verdict = admit(&slots, tier, self.config.realtime_headroom, self.config.typical_request_ms);
        let chosen = match verdict {
            Verdict::Admit { replica } => candidates[replica],
            Verdict::AdmitByCutting { replica, victim_tier } => {
                let r = &mut replicas[candidates[replica]];
                match r.in_flight.iter_mut().rev().find(|f| f.tier == victim_tier && f.cuttable) {
                    Some(victim) => {
                        // Its slot frees when its stream ends; until then nobody else may
                        // count on cutting it again.
                        victim.cuttable = false;
                        victim.cut.notify_one();
                        r.cut_off += 1;
                    }
                    None if r.slots.total() < r.slots.max_concurrency => {}
                    None => return Err(self.config.typical_request_ms / 4),
                }
                candidates[replica]
            }
            Verdict::Refuse { retry_after_ms } => return Err(retry_after_ms),
        };
        replicas[chosen].slots.in_flight[tier_idx(tier)] += 1;
        replicas[chosen].in_flight.push(InFlight { id, tier, cut: cut.clone(), cuttable: cuttable && tier != Tier::Realtime });
        drop(replicas);
        Ok((chosen, SlotGuard { gateway: self.clone(), replica: chosen, id, tier }, cut))
    }

    /// Like [`Gateway::take_slot`], but waits up to `wait_ms` for a slot: a freed slot wakes the
    /// highest-tier, oldest waiter, and every waiter retries at least each second, so replicas
    /// are packed to their best concurrency with queued work, higher tiers first. Returns the
    /// last suggested wait when time runs out.
    pub(crate) async fn wait_for_slot(self: Arc<Self>, candidates: &[usize], tier: Tier, cuttable: bool, wait_ms: u64) -> Result<(usize, SlotGuard, Arc<Notify>), u64> {
        // Work already waiting at this tier or above goes first.
        if wait_ms == 0 || !self.outranked(tier, candidates, u64::MAX) {
            let first = self.clone().take_slot(candidates, tier, cuttable);
            if first.is_ok() || wait_ms == 0 {
                return first;
            }
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let wake = Arc::new(Notify::new());
        self.lock_waiters().push(Waiter { id, tier, candidates: candidates.to_vec(), wake: wake.clone(), woken: false });
        let _registered = WaiterGuard(&self, id);
        loop {
            let tick = (tokio::time::Instant::now() + std::time::Duration::from_secs(1)).min(deadline);
            let woken = tokio::select! {
                _ = wake.notified() => true,
                _ = tokio::time::sleep_until(tick) => false,
            };
            let timed_out = tokio::time::Instant::now() >= deadline;
            // A freed slot was handed to this waiter; on its own tick it tries only when nobody
            // ahead of it waits, so the ticks of many low-tier waiters do not jump the queue.
            if woken || timed_out || !self.outranked(tier, candidates, id) {
                match self.clone().take_slot(candidates, tier, cuttable) {
                    Ok(taken) => return Ok(taken),
                    Err(wait) if timed_out => return Err(wait),
                    Err(_) => {}
                }
            }
            if let Some(w) = self.lock_waiters().iter_mut().find(|w| w.id == id) {
                w.woken = false;
            }
        }
    }

    /// Whether a request of `tier` waits behind another for one of the same replicas: a higher
    /// tier, or the same tier queued earlier than `id`.
    fn outranked(&self, tier: Tier, candidates: &[usize], id: u64) -> bool {
        self.lock_waiters()
            .iter()
            .any(|w| w.id != id && (w.tier, w.id) < (tier, id) && w.candidates.iter().any(|c| candidates.contains(c)))
    }

    /// Feeds one time between tokens of a stream on `replica` to its learner, if it learns.
    fn observe_pace(&self, replica: usize, gap_ms: f64) {
        let mut replicas = self.lock_replicas();
        let Some(r) = replicas.get_mut(replica) else { return };
        let Some(learner) = r.learner.as_mut() else { return };
        let best = learner.observe(r.slots.total(), gap_ms);
        r.slots.best_concurrency = best;
        if !self.config.replicas[replica].learn.is_some_and(|l| l.fixed_max) {
            r.slots.max_concurrency = best + best / 2;
        }
    }

    /// Replicas that serve `model`.
    pub(crate) fn replicas_for(&self, model: &str) -> Vec<usize> {
        self.config.replicas.iter().enumerate().filter(|(_, r)| r.model == model).map(|(i, _)| i).collect()
    }

    /// Sends a non-streaming request to a replica; returns its status and body.
    pub(crate) async fn forward_json(&self, replica: usize, path: &str, body: &Value) -> Result<(u16, Bytes), String> {
        let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let resp = self.upstreams.post(replica, path, Bytes::from(bytes)).await.map_err(|e| self.upstream_failed(replica, &e))?;
        let status = resp.status;
        let bytes = resp.bytes().await.map_err(|e| self.upstream_failed(replica, &e))?;
        Ok((status, bytes))
    }

    /// Handles one chat, completion, embedding or Responses API request end to end.
    pub(crate) async fn handle(self: Arc<Self>, headers: CompletionHeaders, raw: Bytes, endpoint: Endpoint) -> Response {
        let Some(tenant) = self.tenant_of_key(headers.authorization.as_ref()) else {
            return unauthorized();
        };
        let facts = match RequestFacts::of_request(&raw, endpoint) {
            Ok(facts) => facts,
            Err(BodyError::NotAnObject) => return bad_request("the body must be a JSON object", "body"),
            Err(BodyError::Invalid(e)) => return bad_request(&format!("invalid JSON body: {e}"), "body"),
        };
        if let Some((message, param)) = facts.problem_at(endpoint) {
            return bad_request(&message, param);
        }
        let model = facts.model.as_deref().unwrap_or_default();
        let mut candidates = self.replicas_for(model);
        if candidates.is_empty() {
            return model_not_found(model);
        }
        if let Some(asked) = facts.max_output_tokens() {
            let limit = |i: &usize| self.config.replicas[*i].max_tokens;
            let most = candidates.iter().map(limit).try_fold(0u64, |most, l| l.map(|l| most.max(l)));
            if let Some(most) = most.filter(|most| asked > *most) {
                let field = output_limit_field(endpoint, &facts);
                return bad_request(&format!("{field} is too large: {asked}. The replicas of `{model}` generate at most {most} tokens per request."), field);
            }
            candidates.retain(|i| limit(i).is_none_or(|l| asked <= l));
        }
        let base_tier = self.lock_tenants().get(tenant).map_or(Tier::Realtime, |t| t.tier);
        let tier = match headers.tier.map(|v| v.to_str().unwrap_or("").parse::<Tier>()) {
            None => base_tier,
            Some(Ok(t)) if t >= base_tier => t,
            Some(Ok(t)) => return bad_request(&format!("tier {t} is above this key's tier {base_tier}; a header may only lower it"), "x-tidepool-tier"),
            Some(Err(e)) => return bad_request(&e, "x-tidepool-tier"),
        };
        let stream = endpoint != Endpoint::Embeddings && facts.streamed();
        let estimate = facts.estimate(endpoint, DEFAULT_COMPLETION_ESTIMATE);
        let now = self.now_ms();
        {
            let mut tenants = self.lock_tenants();
            let Some(t) = tenants.get_mut(tenant) else { return bad_request("unknown tenant", "authorization") };
            if let Err(wait) = t.rpm.take(1, now) {
                t.refused += 1;
                drop(tenants);
                self.count_refusal(tier, Refusal::Requests);
                return self.too_many(tenant, wait, "Rate limit reached for requests per minute.", "requests", "rate_limit_exceeded");
            }
            if estimate > t.tpm.capacity() {
                let limit = t.tpm.capacity();
                t.rpm.give_back(1, now);
                t.refused += 1;
                drop(tenants);
                self.count_refusal(tier, Refusal::Tokens);
                // No Retry-After: waiting never helps; a smaller request (or budget) does.
                let message = format!(
                    "Request too large for {model} on tokens per minute (TPM): Limit {limit}, Requested {estimate}. The input or output tokens must be reduced in order to run successfully."
                );
                let mut response = error(StatusCode::TOO_MANY_REQUESTS, &message, "tokens", None, Some("rate_limit_exceeded"));
                self.rate_headers(tenant, response.headers_mut());
                return response;
            }
            if let Err(wait) = t.tpm.take(estimate, now) {
                t.rpm.give_back(1, now);
                t.refused += 1;
                drop(tenants);
                self.count_refusal(tier, Refusal::Tokens);
                return self.too_many(tenant, wait, "Rate limit reached for tokens per minute.", "tokens", "rate_limit_exceeded");
            }
        }
        // Realtime has slots up to the hard cap and waits only there, ahead of everyone, for
        // at most the Retry-After it would otherwise get: a slot frees every few milliseconds
        // at the cap, and a chat client told to retry comes back a second later at best.
        // Interruptible waits briefly, ahead of the lower tiers, and is shed when that is not
        // enough; the lower tiers queue.
        let wait_ms = match tier {
            Tier::Realtime => (self.config.typical_request_ms / 4).min(self.config.queue_wait_ms),
            Tier::Interruptible => (self.config.typical_request_ms / 2).min(self.config.queue_wait_ms),
            _ => self.config.queue_wait_ms,
        };
        let (replica, guard, cut) = match self.clone().wait_for_slot(&candidates, tier, stream, wait_ms).await {
            Ok(taken) => taken,
            Err(wait) => {
                let mut tenants = self.lock_tenants();
                if let Some(t) = tenants.get_mut(tenant) {
                    t.rpm.give_back(1, now);
                    t.tpm.give_back(estimate, now);
                    t.refused += 1;
                }
                drop(tenants);
                self.count_refusal(tier, Refusal::Capacity);
                return self.too_many(tenant, wait, &format!("The {tier} tier is at capacity; retry later."), "requests", "server_overloaded");
            }
        };
        // The request goes on as the client wrote it (unknown fields included), not re-encoded.
        let resp = match self.upstreams.post(replica, endpoint.path(), raw).await {
            Ok(r) => r,
            Err(e) => {
                self.settle(tenant, estimate, 0, 0);
                return error(StatusCode::BAD_GATEWAY, &self.upstream_failed(replica, &e), "server_error", None, Some("upstream_error"));
            }
        };
        let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
        if !status.is_success() || !stream {
            let bytes = match resp.bytes().await {
                Ok(bytes) => bytes,
                Err(e) => {
                    drop(guard);
                    self.settle(tenant, estimate, 0, 0);
                    return error(StatusCode::BAD_GATEWAY, &self.upstream_failed(replica, &e), "server_error", None, Some("upstream_error"));
                }
            };
            drop(guard);
            let usage = tidepool_api::gateway::usage_of(&bytes).unwrap_or_default();
            self.settle(tenant, estimate, usage.prompt_tokens, usage.completion_tokens);
            let mut response = (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response();
            self.rate_headers(tenant, response.headers_mut());
            return response;
        }
        self.stream_through(resp, guard, cut, tenant, estimate, endpoint, facts.prompt_tokens())
    }

    fn count_refusal(&self, tier: Tier, why: Refusal) {
        self.refusals[tier_idx(tier)][why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Records what a request really used and returns the unused part of its estimate.
    fn settle(&self, tenant: usize, estimate: u64, prompt: u64, completion: u64) {
        let now = self.now_ms();
        let mut tenants = self.lock_tenants();
        let Some(t) = tenants.get_mut(tenant) else { return };
        t.requests += 1;
        t.prompt_tokens += prompt;
        t.completion_tokens += completion;
        let used = prompt + completion;
        if used < estimate {
            t.tpm.give_back(estimate - used, now);
        } else {
            t.tpm.charge(used - estimate, now);
        }
    }

    /// Passes an SSE stream through, counting tokens, and ends it cleanly when cut off.
    #[allow(clippy::too_many_arguments)]
    fn stream_through(
        self: Arc<Self>,
        resp: crate::upstream::Answer,
        guard: SlotGuard,
        cut: Arc<Notify>,
        tenant: usize,
        estimate: u64,
        endpoint: Endpoint,
        prompt: u64,
    ) -> Response {
        struct Pass {
            upstream: futures_util::stream::BoxStream<'static, Result<Bytes, String>>,
            buffer: Vec<u8>,
            guard: Option<SlotGuard>,
            cut: Arc<Notify>,
            gateway: Arc<Gateway>,
            tenant: usize,
            estimate: u64,
            prompt: u64,
            completion: u64,
            usage_seen: bool,
            /// One more than the highest choice index seen: each is ended when cut off.
            choices_seen: u64,
            endpoint: Endpoint,
            /// The first event (a Responses stream: the response object of the first event
            /// that carries one), the shape of the cut-off tail.
            template: Option<Value>,
            /// A Responses stream's last `sequence_number`.
            sequence: u64,
            done: bool,
            replica: usize,
            last_token: Option<Instant>,
        }
        impl Pass {
            fn finish(&mut self) {
                if let Some(g) = self.guard.take() {
                    drop(g);
                    let prompt = self.prompt;
                    self.gateway.settle(self.tenant, self.estimate, prompt, self.completion);
                }
            }
            /// Counts the tokens of complete events in the buffer; returns the bytes to pass on.
            fn take_events(&mut self) -> Vec<u8> {
                let Some(end) = self.buffer.windows(2).rposition(|w| w == b"\n\n") else { return Vec::new() };
                let out: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let mut tokens = 0u64;
                for event in out.split(|b| *b == b'\n') {
                    let Some(data) = event.strip_prefix(b"data: ") else { continue };
                    let Ok(v) = serde_json::from_slice::<Value>(data) else { continue };
                    if self.endpoint == Endpoint::Responses {
                        tokens += self.take_response_event(&v);
                        continue;
                    }
                    if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                        self.usage_seen = true;
                        self.prompt = u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(self.prompt);
                        self.completion = u.get("completion_tokens").and_then(Value::as_u64).unwrap_or(self.completion);
                    }
                    if let Some(choices) = v.get("choices").and_then(Value::as_array) {
                        for index in choices.iter().filter_map(|c| c.get("index").and_then(Value::as_u64)) {
                            self.choices_seen = self.choices_seen.max(index.saturating_add(1));
                        }
                        let here = choices
                            .iter()
                            .filter(|c| {
                                c.pointer("/delta/content").and_then(Value::as_str).is_some_and(|s| !s.is_empty())
                                    || c.get("text").and_then(Value::as_str).is_some_and(|s| !s.is_empty())
                            })
                            .count() as u64;
                        tokens += here;
                        if !self.usage_seen {
                            self.completion += here;
                        }
                    }
                    if self.template.is_none() {
                        self.template = Some(v);
                    }
                }
                if tokens > 0 {
                    let now = Instant::now();
                    // The first token's wait is prefill and queueing, not the batch's pace.
                    if let Some(last) = self.last_token.replace(now) {
                        self.gateway.observe_pace(self.replica, (now - last).as_secs_f64() * 1000.0 / tokens as f64);
                    }
                }
                out
            }
            /// Reads one event of a Responses stream: its text deltas are tokens, and the
            /// usage comes with the response that ends it; returns the tokens it carried.
            fn take_response_event(&mut self, event: &Value) -> u64 {
                self.sequence = self.sequence.max(event.get("sequence_number").and_then(Value::as_u64).unwrap_or(0));
                if let Some(response) = event.get("response") {
                    if let Some(u) = response.get("usage").filter(|u| !u.is_null()) {
                        self.usage_seen = true;
                        self.prompt = u.get("input_tokens").and_then(Value::as_u64).unwrap_or(self.prompt);
                        self.completion = u.get("output_tokens").and_then(Value::as_u64).unwrap_or(self.completion);
                    }
                    if self.template.is_none() {
                        self.template = Some(response.clone());
                    }
                }
                let delta = event.get("type").and_then(Value::as_str) == Some("response.output_text.delta")
                    && event.get("delta").and_then(Value::as_str).is_some_and(|d| !d.is_empty());
                if delta && !self.usage_seen {
                    self.completion += 1;
                }
                u64::from(delta)
            }
            /// How a stream cut off for realtime ends: a Responses stream with its response
            /// `incomplete` for the reason `preempted`, the others with a last chunk per choice
            /// whose `finish_reason` is `preempted`, then `[DONE]`.
            fn cut_off_tail(&self) -> Bytes {
                if self.endpoint == Endpoint::Responses {
                    let mut response = self.template.clone().unwrap_or_else(|| json!({}));
                    response["status"] = json!("incomplete");
                    response["incomplete_details"] = json!({"reason": "preempted"});
                    let event = json!({"type": "response.incomplete", "sequence_number": self.sequence + 1, "response": response});
                    return Bytes::from(format!("event: response.incomplete\ndata: {event}\n\n"));
                }
                let mut v = self.template.clone().unwrap_or_else(|| json!({}));
                if let Some(obj) = v.as_object_mut() {
                    obj.remove("usage");
                }
                let mut tail = String::new();
                for index in 0..self.choices_seen.min(128) {
                    let choice = if self.endpoint == Endpoint::Chat {
                        json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": "preempted"})
                    } else {
                        json!({"index": index, "text": "", "logprobs": null, "finish_reason": "preempted"})
                    };
                    v["choices"] = json!([choice]);
                    tail.push_str(&format!("data: {v}\n\n"));
                }
                tail.push_str("data: [DONE]\n\n");
                Bytes::from(tail)
            }
        }
        impl Drop for Pass {
            fn drop(&mut self) {
                self.finish();
            }
        }
        let pass = Pass {
            replica: guard.replica,
            last_token: None,
            upstream: resp.into_stream(),
            buffer: Vec::new(),
            guard: Some(guard),
            cut,
            gateway: self.clone(),
            tenant,
            estimate,
            prompt,
            completion: 0,
            usage_seen: false,
            choices_seen: 1,
            endpoint,
            template: None,
            sequence: 0,
            done: false,
        };
        let body = futures_util::stream::unfold(pass, |mut pass| async move {
            if pass.done {
                return None;
            }
            loop {
                let next = tokio::select! {
                    chunk = pass.upstream.next() => Some(chunk),
                    _ = pass.cut.notified() => None,
                };
                match next {
                    None => {
                        pass.done = true;
                        let tail = pass.cut_off_tail();
                        pass.finish();
                        return Some((Ok::<Bytes, std::io::Error>(tail), pass));
                    }
                    Some(Some(Ok(bytes))) => {
                        pass.buffer.extend_from_slice(&bytes);
                        let out = pass.take_events();
                        if !out.is_empty() {
                            return Some((Ok(Bytes::from(out)), pass));
                        }
                    }
                    Some(Some(Err(e))) => {
                        pass.done = true;
                        pass.finish();
                        return Some((Err(std::io::Error::other(e)), pass));
                    }
                    Some(None) => {
                        pass.done = true;
                        let rest = std::mem::take(&mut pass.buffer);
                        pass.finish();
                        return Some((Ok(Bytes::from(rest)), pass));
                    }
                }
            }
        });
        let mut response = crate::openai::event_stream(Body::from_stream(body));
        self.rate_headers(tenant, response.headers_mut());
        response
    }

    fn metrics_text(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP tidepool_gateway_tokens_total Tokens accounted per tenant and kind.\n# TYPE tidepool_gateway_tokens_total counter\n");
        let tenants = self.lock_tenants();
        for t in tenants.iter() {
            out.push_str(&format!("tidepool_gateway_tokens_total{{tenant=\"{}\",kind=\"prompt\"}} {}\n", t.name, t.prompt_tokens));
            out.push_str(&format!("tidepool_gateway_tokens_total{{tenant=\"{}\",kind=\"completion\"}} {}\n", t.name, t.completion_tokens));
        }
        out.push_str("# HELP tidepool_gateway_requests_total Requests answered per tenant.\n# TYPE tidepool_gateway_requests_total counter\n");
        for t in tenants.iter() {
            out.push_str(&format!("tidepool_gateway_requests_total{{tenant=\"{}\"}} {}\n", t.name, t.requests));
        }
        out.push_str("# HELP tidepool_gateway_refused_total Requests answered 429 per tenant.\n# TYPE tidepool_gateway_refused_total counter\n");
        for t in tenants.iter() {
            out.push_str(&format!("tidepool_gateway_refused_total{{tenant=\"{}\"}} {}\n", t.name, t.refused));
        }
        drop(tenants);
        out.push_str("# HELP tidepool_gateway_refused_by_tier_total Requests answered 429 per tier and limit hit (rpm, tpm, capacity).\n# TYPE tidepool_gateway_refused_by_tier_total counter\n");
        for tier in Tier::ALL {
            for why in Refusal::ALL {
                let n = self.refusals[tier_idx(tier)][why as usize].load(Ordering::Relaxed);
                out.push_str(&format!("tidepool_gateway_refused_by_tier_total{{tier=\"{tier}\",limit=\"{}\"}} {n}\n", why.label()));
            }
        }
        out.push_str("# HELP tidepool_gateway_waiting Requests waiting for a slot per tier.\n# TYPE tidepool_gateway_waiting gauge\n");
        let mut waiting = [0u64; Tier::ALL.len()];
        for w in self.lock_waiters().iter() {
            waiting[tier_idx(w.tier)] += 1;
        }
        for tier in Tier::ALL {
            out.push_str(&format!("tidepool_gateway_waiting{{tier=\"{tier}\"}} {}\n", waiting[tier_idx(tier)]));
        }
        out.push_str("# HELP tidepool_gateway_in_flight Requests in flight per replica and tier.\n# TYPE tidepool_gateway_in_flight gauge\n");
        let replicas = self.lock_replicas();
        for (i, r) in replicas.iter().enumerate() {
            for tier in Tier::ALL {
                out.push_str(&format!("tidepool_gateway_in_flight{{replica=\"{i}\",tier=\"{tier}\"}} {}\n", r.slots.in_flight[tier_idx(tier)]));
            }
        }
        out.push_str("# HELP tidepool_gateway_best_concurrency Best concurrency per replica (configured or learned).\n# TYPE tidepool_gateway_best_concurrency gauge\n");
        for (i, r) in replicas.iter().enumerate() {
            out.push_str(&format!("tidepool_gateway_best_concurrency{{replica=\"{i}\"}} {}\n", r.slots.best_concurrency));
        }
        out.push_str("# HELP tidepool_gateway_cut_off_total Lower-tier streams cut off for realtime.\n# TYPE tidepool_gateway_cut_off_total counter\n");
        for (i, r) in replicas.iter().enumerate() {
            out.push_str(&format!("tidepool_gateway_cut_off_total{{replica=\"{i}\"}} {}\n", r.cut_off));
        }
        out
    }
}

/// The header that lowers a request's tier.
pub(crate) const TIER_HEADER: HeaderName = HeaderName::from_static("x-tidepool-tier");
/// The request id on every answer: the client's when it sent one, else one made here.
pub(crate) const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Puts `x-request-id` on every answer of the router's routes.
async fn with_request_id(State(g): State<Arc<Gateway>>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let given = request.headers().get(REQUEST_ID_HEADER).cloned();
    let mut response = next.run(request).await;
    response.headers_mut().insert(REQUEST_ID_HEADER, g.request_id(given.as_ref()));
    response
}

/// The only headers a completion request is judged by: its key and the tier it asks for.
#[derive(Default)]
pub(crate) struct CompletionHeaders {
    /// `authorization`: the tenant's key.
    pub authorization: Option<HeaderValue>,
    /// `x-tidepool-tier`: a tier at or below the key's.
    pub tier: Option<HeaderValue>,
}

/// The field a request's output limit was given in, to name in an error.
fn output_limit_field(endpoint: Endpoint, facts: &RequestFacts) -> &'static str {
    if endpoint == Endpoint::Responses {
        "max_output_tokens"
    } else if facts.max_completion_tokens.get().is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    }
}

/// A request's headers that matter and whole body, taken apart without copying the headers
/// (axum's `HeaderMap` extractor clones them, which showed in profiles at 10,000 requests/s).
async fn headers_and_body(g: &Gateway, request: axum::extract::Request) -> Result<(CompletionHeaders, Bytes), Response> {
    let (mut parts, body) = request.into_parts();
    let headers = CompletionHeaders { authorization: parts.headers.remove(header::AUTHORIZATION), tier: parts.headers.remove(TIER_HEADER) };
    match axum::body::to_bytes(body, g.config.max_request_bytes).await {
        Ok(bytes) => Ok((headers, bytes)),
        Err(e) if e.to_string().contains("length limit") => Err(crate::openai::too_large(g.config.max_request_bytes)),
        Err(e) => Err(bad_request(&format!("cannot read the request body: {e}"), "body")),
    }
}

async fn chat_completions(State(g): State<Arc<Gateway>>, request: axum::extract::Request) -> Response {
    match headers_and_body(&g, request).await {
        Ok((headers, body)) => g.handle(headers, body, Endpoint::Chat).await,
        Err(refused) => refused,
    }
}

async fn completions(State(g): State<Arc<Gateway>>, request: axum::extract::Request) -> Response {
    match headers_and_body(&g, request).await {
        Ok((headers, body)) => g.handle(headers, body, Endpoint::Completions).await,
        Err(refused) => refused,
    }
}

async fn responses(State(g): State<Arc<Gateway>>, request: axum::extract::Request) -> Response {
    match headers_and_body(&g, request).await {
        Ok((headers, body)) => g.handle(headers, body, Endpoint::Responses).await,
        Err(refused) => refused,
    }
}

async fn embeddings(State(g): State<Arc<Gateway>>, request: axum::extract::Request) -> Response {
    match headers_and_body(&g, request).await {
        Ok((headers, body)) => g.handle(headers, body, Endpoint::Embeddings).await,
        Err(refused) => refused,
    }
}

async fn models(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if g.tenant_of(&headers).is_none() {
        return unauthorized();
    }
    let mut names: Vec<&str> = g.config.replicas.iter().map(|r| r.model.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let data: Vec<Value> = names.into_iter().map(|m| model_object(m, "tidepool")).collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn model(State(g): State<Arc<Gateway>>, headers: HeaderMap, axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    if g.tenant_of(&headers).is_none() {
        return unauthorized();
    }
    if g.replicas_for(&name).is_empty() {
        return model_not_found(&name);
    }
    axum::Json(model_object(&name, "tidepool")).into_response()
}

/// `/metrics` beside the API: it names every tenant, so only the metrics key reads it.
async fn metrics(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if g.config.metrics_key.is_none() {
        return error(StatusCode::NOT_FOUND, "Metrics are served on metrics_listen, or here with metrics_key set.", "invalid_request_error", None, Some("unknown_url"));
    }
    if !g.may_scrape(&headers) {
        return unauthorized();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], g.metrics_text()).into_response()
}

/// `/metrics` on its own address: open on loopback, else behind the metrics key.
async fn metrics_alone(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if g.config.metrics_key.is_some() && !g.may_scrape(&headers) {
        return unauthorized();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], g.metrics_text()).into_response()
}

/// Binds `metrics_listen` if configured, checks what the gateway would expose, and serves
/// `/metrics` there on the current runtime.
async fn expose(gateway: &Arc<Gateway>, listening: std::net::SocketAddr) -> Result<(), String> {
    let metrics = match &gateway.config.metrics_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("metrics_listen: cannot listen on {addr}: {e}"))?),
        None => None,
    };
    let metrics_addr = metrics.as_ref().map(|l| l.local_addr()).transpose().map_err(|e| e.to_string())?;
    gateway.config.check_exposure(listening, metrics_addr)?;
    if let (Some(listener), Some(addr)) = (metrics, metrics_addr) {
        tracing::info!("gateway metrics on http://{addr}/metrics");
        let app = Router::new().route("/metrics", get(metrics_alone)).with_state(gateway.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    Ok(())
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Unknown endpoint.", "invalid_request_error", None, Some("unknown_url"))
}

/// The gateway's routes.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses))
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
        .route("/v1/files", post(crate::batch::upload).get(crate::batch::list_files))
        .route("/v1/files/{id}", get(crate::batch::get_file).delete(crate::batch::delete_file))
        .route("/v1/files/{id}/content", get(crate::batch::file_content))
        .route("/v1/batches", post(crate::batch::create_batch).get(crate::batch::list_batches))
        .route("/v1/batches/{id}", get(crate::batch::get_batch))
        .route("/v1/batches/{id}/cancel", post(crate::batch::cancel_batch))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(gateway.clone(), with_request_id))
        .with_state(gateway)
}

/// Runs the gateway on `listener` until `shutdown` resolves, on the caller's runtime.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let gateway = serving(config)?;
    expose(&gateway, listener.local_addr().map_err(|e| e.to_string())?).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (handed, incoming) = tokio::sync::mpsc::unbounded_channel();
    let served = tokio::spawn(serve_handed(incoming, gateway.clone(), router(gateway.clone()), stop_rx));
    accept_until(listener, &gateway, &[handed], shutdown).await;
    let _ = stop_tx.send(true);
    served.await.map_err(|e| e.to_string())
}

/// Accepts connections on `listener` and hands them to `workers` in turn until `shutdown`
/// resolves or every worker is gone.
async fn accept_until(
    listener: tokio::net::TcpListener,
    gateway: &Gateway,
    workers: &[tokio::sync::mpsc::UnboundedSender<std::net::TcpStream>],
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut next = 0;
    let mut cap_logged: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Past the cap a connection is closed at once: held, it would keep its
                    // socket and memory whatever it sends.
                    if gateway.open_connections.fetch_add(1, Ordering::SeqCst) >= gateway.config.max_connections {
                        gateway.open_connections.fetch_sub(1, Ordering::SeqCst);
                        if cap_logged.is_none_or(|t| t.elapsed().as_secs() >= 10) {
                            tracing::warn!(max_connections = gateway.config.max_connections, %peer, "gateway: connection cap reached: closing new connections");
                            cap_logged = Some(Instant::now());
                        }
                        continue;
                    }
                    // Answers go out as soon as they are written, not held back by Nagle's algorithm.
                    let _ = stream.set_nodelay(true);
                    let Ok(std_stream) = stream.into_std() else { continue };
                    if workers[next].send(std_stream).is_err() {
                        return;
                    }
                    next = (next + 1) % workers.len();
                }
                // Out of file descriptors and the like: the listener stays, and is tried again soon.
                Err(e) => {
                    tracing::warn!("gateway: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serves the connections handed over on `incoming`, each in a task of the current event
/// loop, until `stop` is set; then waits until those under way have ended.
async fn serve_handed(
    mut incoming: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>,
    gateway: Arc<Gateway>,
    app: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // Every connection's task holds a sender; the channel closes when the last one ends.
    let (open, mut all_ended) = tokio::sync::mpsc::channel::<()>(1);
    let connection_stop = stop.clone();
    let handed_all = loop {
        tokio::select! {
            handed = incoming.recv() => match handed {
                Some(std_stream) => match tokio::net::TcpStream::from_std(std_stream) {
                    Ok(stream) => {
                        let served = crate::connection::serve(stream, gateway.clone(), app.clone(), connection_stop.clone());
                        let open = open.clone();
                        let counted = gateway.clone();
                        tokio::spawn(async move {
                            served.await;
                            counted.open_connections.fetch_sub(1, Ordering::SeqCst);
                            drop(open);
                        });
                    }
                    Err(e) => {
                        gateway.open_connections.fetch_sub(1, Ordering::SeqCst);
                        tracing::warn!("gateway: a connection could not be taken up: {e}");
                    }
                },
                None => break true,
            },
            _ = stop.wait_for(|s| *s) => break false,
        }
    };
    if handed_all {
        let _ = stop.wait_for(|s| *s).await;
    }
    drop(open);
    let _ = all_ended.recv().await;
}

/// The gateway for `config`, with the batches it had journaled running again.
fn serving(config: GatewayConfig) -> Result<Arc<Gateway>, String> {
    let gateway = Arc::new(Gateway::new(config)?);
    crate::batch::resume_all(gateway.clone());
    Ok(gateway)
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Result<Vec<usize>, String> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set is as large as the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(format!("pin_workers: sched_getaffinity: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: CPU_ISSET reads the set for an index below CPU_SETSIZE.
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect();
    if cpus.is_empty() {
        return Err("pin_workers: the process may run on no CPU".into());
    }
    Ok(cpus)
}

/// Keeps the calling thread on `cpu`: its connections' data stays in that CPU's caches and
/// it is not moved behind another busy thread.
fn pin_this_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET panics on, rather than writes past, an index beyond the set.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the set is as large as the size passed; pid 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs the gateway on `listener` until `shutdown` resolves, its connections spread over
/// the configured number of threads that each run their own event loop: a request is read, proxied and
/// answered on one thread, with no wake-up of another thread on the way (on a shared
/// work-stealing runtime those cost about a quarter of the gateway's CPU per request).
pub async fn run_on_workers(
    listener: tokio::net::TcpListener,
    config: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let workers = config.workers;
    let cpus = if config.pin_workers { allowed_cpus()? } else { Vec::new() };
    let gateway = serving(config)?;
    expose(&gateway, listener.local_addr().map_err(|e| e.to_string())?).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut senders = Vec::new();
    let mut threads = Vec::new();
    for n in 0..workers.max(1) {
        let (tx, incoming) = tokio::sync::mpsc::unbounded_channel();
        senders.push(tx);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("gateway worker: {e}"))?;
        let app = router(gateway.clone());
        let stop = stop_rx.clone();
        let gateway = gateway.clone();
        let cpu = (!cpus.is_empty()).then(|| cpus[n % cpus.len()]);
        let thread = std::thread::Builder::new()
            .name(format!("gateway-{n}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    if let Err(e) = pin_this_thread(cpu) {
                        tracing::warn!("gateway-{n}: not kept on CPU {cpu}: {e}");
                    }
                }
                runtime.block_on(serve_handed(incoming, gateway, app, stop));
            })
            .map_err(|e| format!("gateway worker: {e}"))?;
        threads.push(thread);
    }
    accept_until(listener, &gateway, &senders, shutdown).await;
    let _ = stop_tx.send(true);
    drop(senders);
    let results = tokio::task::spawn_blocking(move || threads.into_iter().map(|t| t.join()).collect::<Vec<_>>()).await.map_err(|e| e.to_string())?;
    for r in results {
        r.map_err(|_| "a gateway worker panicked".to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPUs a thread of this process named `name` may run on, once it exists.
    fn cpus_of_thread(name: &str) -> Option<String> {
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() == name {
                let status = std::fs::read_to_string(task.path().join("status")).ok()?;
                return status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(|v| v.trim().to_string());
            }
        }
        None
    }

    #[tokio::test]
    async fn pinned_workers_each_keep_to_one_allowed_cpu() {
        let allowed = allowed_cpus().unwrap_or_default();
        assert!(!allowed.is_empty());
        let config = GatewayConfig::from_toml("workers = 2\npin_workers = true\n").unwrap_or_else(|e| unreachable!("{e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| unreachable!("{e}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(run_on_workers(listener, config, async move {
            let _ = stopped.await;
        }));
        let mut seen = Vec::new();
        for _ in 0..200 {
            seen = ["gateway-0", "gateway-1"].iter().filter_map(|n| cpus_of_thread(n)).collect();
            if seen.len() == 2 && seen.iter().all(|c| !c.contains(['-', ','])) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let _ = stop.send(());
        assert!(served.await.is_ok_and(|r| r.is_ok()));
        let expected: Vec<String> = (0..2).map(|n| allowed[n % allowed.len()].to_string()).collect();
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn realtime_at_the_hard_cap_waits_for_a_slot_rather_than_a_429_but_not_for_long() {
        use crate::testing::{answer, completion, gateway_on_loopback, metrics};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // One slot; realtime waits at most 800 / 4 = 200 ms for it.
        let (addr, stop, served) = gateway_on_loopback("typical_request_ms = 800\nrealtime_headroom = 0\n", "best_concurrency = 1\nmax_concurrency = 1\n", 20.0).await;
        let stream = |tokens: u32| completion("/v1/completions", &format!(r#"{{"model":"m","prompt":"x","max_tokens":{tokens},"stream":true}}"#), "");
        let one_more = completion("/v1/completions", r#"{"model":"m","prompt":"x","max_tokens":1}"#, "");
        // A stream of 4 tokens (about 100 ms) holds the slot: the next realtime request waits and is served.
        let mut holder = tokio::net::TcpStream::connect(addr).await.unwrap();
        holder.write_all(stream(4).as_bytes()).await.unwrap();
        holder.read_exact(&mut [0u8; 12]).await.unwrap();
        let mut waiting = tokio::net::TcpStream::connect(addr).await.unwrap();
        waiting.write_all(one_more.as_bytes()).await.unwrap();
        let (head, body) = answer(&mut waiting, &mut Vec::new()).await;
        assert!(head.starts_with("http/1.1 200"), "{head}: {body}");
        // A stream of 100 tokens (2 s) holds it past the wait: a 429 with Retry-After, after the wait.
        let mut holder = tokio::net::TcpStream::connect(addr).await.unwrap();
        holder.write_all(stream(100).as_bytes()).await.unwrap();
        holder.read_exact(&mut [0u8; 12]).await.unwrap();
        let mut refused = tokio::net::TcpStream::connect(addr).await.unwrap();
        let asked = std::time::Instant::now();
        refused.write_all(one_more.as_bytes()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let seen = metrics(addr).await;
        assert!(seen.contains("\ntidepool_gateway_waiting{tier=\"realtime\"} 1\n"), "{seen}");
        let (head, body) = answer(&mut refused, &mut Vec::new()).await;
        let waited = asked.elapsed();
        assert!(head.starts_with("http/1.1 429") && head.contains("\r\nretry-after: 1"), "{head}: {body}");
        assert!(waited >= std::time::Duration::from_millis(190) && waited < std::time::Duration::from_millis(1500), "{waited:?}");
        let seen = metrics(addr).await;
        assert!(seen.contains("\ntidepool_gateway_waiting{tier=\"realtime\"} 0\n"), "{seen}");
        assert!(seen.contains("\ntidepool_gateway_refused_by_tier_total{tier=\"realtime\",limit=\"capacity\"} 1\n"), "{seen}");
        assert!(seen.contains("\ntidepool_gateway_refused_by_tier_total{tier=\"realtime\",limit=\"tpm\"} 0\n"), "{seen}");
        drop(holder);
        let _ = stop.send(());
        assert!(served.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn realtime_ends_a_filler_responses_stream_as_incomplete_and_its_tokens_are_counted() {
        use crate::testing::{answer, completion, gateway_on_loopback, metrics};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, stop, served) = gateway_on_loopback("realtime_headroom = 0\n", "best_concurrency = 1\nmax_concurrency = 1\n", 20.0).await;
        // 100 tokens at 20 ms: still streaming when realtime comes.
        let long = r#"{"model":"m","input":"x","max_output_tokens":100,"stream":true}"#;
        let mut filler = tokio::net::TcpStream::connect(addr).await.unwrap();
        filler.write_all(completion("/v1/responses", long, "X-Tidepool-Tier: filler\r\nConnection: close\r\n").as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("response.output_text.delta") {
            let mut chunk = [0u8; 4096];
            let n = filler.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            seen.extend_from_slice(&chunk[..n]);
        }
        let mut realtime = tokio::net::TcpStream::connect(addr).await.unwrap();
        realtime.write_all(completion("/v1/responses", r#"{"model":"m","input":"abcdefgh","max_output_tokens":3}"#, "").as_bytes()).await.unwrap();
        let (head, body) = answer(&mut realtime, &mut Vec::new()).await;
        assert!(head.starts_with("http/1.1 200"), "{head}: {body}");
        let answered: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((answered["usage"]["input_tokens"].as_u64(), answered["usage"]["output_tokens"].as_u64()), (Some(2), Some(3)));
        let mut rest = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(10), filler.read_to_end(&mut rest)).await.expect("the cut stream ends").unwrap();
        seen.extend_from_slice(&rest);
        let text = String::from_utf8_lossy(&seen);
        let tail = text.split("event: response.incomplete\ndata: ").nth(1).unwrap_or_else(|| panic!("no response.incomplete in {text}"));
        let event: serde_json::Value = serde_json::from_str(tail.split("\n\n").next().unwrap().trim_end_matches("\r\n0")).unwrap();
        assert_eq!(event["response"]["status"], "incomplete");
        assert_eq!(event["response"]["incomplete_details"]["reason"], "preempted");
        assert!(!text.contains("response.completed"), "{text}");
        let page = metrics(addr).await;
        assert!(page.contains("tidepool_gateway_cut_off_total{replica=\"0\"} 1\n"), "{page}");
        // The realtime answer's 2 + 3 tokens, and the cut stream's prompt token and the deltas it had.
        let prompt: u64 = page.lines().find_map(|l| l.strip_prefix("tidepool_gateway_tokens_total{tenant=\"t\",kind=\"prompt\"} ")).unwrap().parse().unwrap();
        let completion_tokens: u64 = page.lines().find_map(|l| l.strip_prefix("tidepool_gateway_tokens_total{tenant=\"t\",kind=\"completion\"} ")).unwrap().parse().unwrap();
        let deltas = text.matches("event: response.output_text.delta").count() as u64;
        assert_eq!((prompt, completion_tokens), (2 + 1, 3 + deltas), "{page}");
        let _ = stop.send(());
        assert!(served.await.unwrap().is_ok());
    }
}
