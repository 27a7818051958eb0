//! The gateway's state: tenants, replicas and their slots, admission, and proxying a request.
//!
//! **Invariant**: a request holds one slot of its replica from admission until its answer (or
//! stream) ends, so the admission counts are the replica's real concurrency as seen from here.

use crate::config::GatewayConfig;
use crate::error::Error;
use crate::openai::model_object;
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
use crate::upstream::Upstream;
use tidepool_core::admission::{admit, Bucket, ReplicaSlots, Verdict};
use tidepool_core::Tier;
use tokio::sync::Notify;

mod registry;
mod routes;
mod scrape;
mod serving;
mod stream;

pub use registry::ReplicaId;
use registry::{InFlight, Registry};
pub use routes::router;
pub use serving::{run, run_on_workers};
use scrape::{metrics, metrics_alone};

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

/// The gateway.
pub struct Gateway {
    config: GatewayConfig,
    keys: HashMap<String, usize>,
    /// The tenant of every key that is no other's, when one is open.
    open_tenant: Option<usize>,
    tenants: Mutex<Vec<TenantState>>,
    replicas: Mutex<Registry>,
    /// The client of every https replica.
    tls: reqwest::Client,
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
    candidates: Vec<ReplicaId>,
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
    replica: ReplicaId,
    id: u64,
    tier: Tier,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut replicas = self.gateway.lock_replicas();
        // A replica removed meanwhile has nothing left to release.
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
        let tls = crate::upstream::tls_client()?;
        let mut replicas = Registry::default();
        for r in &config.replicas {
            replicas.add(r.clone(), Upstream::new(&r.url, r.api_key.as_deref(), &tls)?);
        }
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
            tls,
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

    fn lock_replicas(&self) -> MutexGuard<'_, Registry> {
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
    fn upstream_failed(&self, replica: ReplicaId, model: &str, why: &str) -> String {
        let url = self.lock_replicas().get(replica).map_or_else(|| "(removed)".to_string(), |r| r.spec.url.clone());
        tracing::warn!(%replica, url, "upstream failed: {why}");
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

    /// A 429 with the tenant's rate headers; `limit` is OpenAI's error type (`requests` or
    /// `tokens`, the limit that was hit).
    fn too_many(&self, tenant: usize, retry_after_ms: Option<u64>, message: &str, limit: &'static str, code: &'static str) -> Response {
        let mut response = Error::RateLimited { message: message.to_string(), limit, code, retry_after_ms }.into_response();
        self.rate_headers(tenant, response.headers_mut());
        response
    }

    /// Admission: a slot on one of `candidates` for a request of `tier`, cutting a lower-tier
    /// stream off if realtime needs it; or how long to wait.
    pub(crate) fn take_slot(self: Arc<Self>, candidates: &[ReplicaId], tier: Tier, cuttable: bool) -> Result<Admitted, u64> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let cut = Arc::new(Notify::new());
        let mut replicas = self.lock_replicas();
        // Candidates drained or removed since they were chosen take nothing new.
        let candidates: Vec<ReplicaId> = candidates.iter().copied().filter(|c| replicas.get(*c).is_some_and(|r| !r.draining)).collect();
        if candidates.is_empty() {
            return Err(self.config.typical_request_ms / 4);
        }
        let slots: Vec<ReplicaSlots> = candidates
            .iter()
            .filter_map(|c| replicas.get(*c))
            .map(|r| {
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
                let Some(r) = replicas.get_mut(candidates[replica]) else { return Err(self.config.typical_request_ms / 4) };
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
        let Some(r) = replicas.get_mut(chosen) else { return Err(self.config.typical_request_ms / 4) };
        r.slots.in_flight[tier_idx(tier)] += 1;
        r.in_flight.push(InFlight { id, tier, cut: cut.clone(), cuttable: cuttable && tier != Tier::Realtime });
        let upstream = r.upstream.clone();
        drop(replicas);
        Ok(Admitted { upstream, guard: SlotGuard { gateway: self.clone(), replica: chosen, id, tier }, cut })
    }

    /// Like [`Gateway::take_slot`], but waits up to `wait_ms` for a slot: a freed slot wakes the
    /// highest-tier, oldest waiter, and every waiter retries at least each second, so replicas
    /// are packed to their best concurrency with queued work, higher tiers first. Returns the
    /// last suggested wait when time runs out.
    pub(crate) async fn wait_for_slot(self: Arc<Self>, candidates: &[ReplicaId], tier: Tier, cuttable: bool, wait_ms: u64) -> Result<Admitted, u64> {
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
    fn outranked(&self, tier: Tier, candidates: &[ReplicaId], id: u64) -> bool {
        self.lock_waiters()
            .iter()
            .any(|w| w.id != id && (w.tier, w.id) < (tier, id) && w.candidates.iter().any(|c| candidates.contains(c)))
    }

    /// Feeds one time between tokens of a stream on `replica` to its learner, if it learns.
    fn observe_pace(&self, replica: ReplicaId, gap_ms: f64) {
        let mut replicas = self.lock_replicas();
        let Some(r) = replicas.get_mut(replica) else { return };
        let Some(learner) = r.learner.as_mut() else { return };
        let best = learner.observe(r.slots.total(), gap_ms);
        r.slots.best_concurrency = best;
        if !r.spec.learn.is_some_and(|l| l.fixed_max) {
            r.slots.max_concurrency = best + best / 2;
        }
    }

    /// Replicas that take new requests for `model`.
    pub(crate) fn replicas_for(&self, model: &str) -> Vec<ReplicaId> {
        self.lock_replicas().serving(model)
    }

    /// The models some replica serves, by name, once each.
    pub(crate) fn models(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock_replicas().iter().filter(|r| !r.draining).map(|r| r.spec.model.clone()).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Adds a replica while requests run: new requests for its model may go to it at once.
    pub fn add_replica(&self, spec: crate::config::Replica) -> Result<ReplicaId, String> {
        let upstream = Upstream::new(&spec.url, spec.api_key.as_deref(), &self.tls)?;
        let id = self.lock_replicas().add(spec, upstream);
        tracing::info!(replica = %id, "replica added");
        Ok(id)
    }

    /// Gives a replica no new requests; those it runs finish. False if there is no such replica.
    pub fn drain_replica(&self, id: ReplicaId) -> bool {
        self.lock_replicas().drain(id)
    }

    /// Forgets a replica; requests it runs finish on the connections they hold. False if
    /// there is no such replica.
    pub fn remove_replica(&self, id: ReplicaId) -> bool {
        let removed = self.lock_replicas().remove(id);
        if removed {
            tracing::info!(replica = %id, "replica removed");
        }
        removed
    }

    /// Every replica: its id, model, whether it drains, and the requests it runs now.
    pub fn replicas(&self) -> Vec<(ReplicaId, String, bool, u32)> {
        self.lock_replicas().iter().map(|r| (r.id, r.spec.model.clone(), r.draining, r.slots.total())).collect()
    }

    /// Sends a non-streaming request to the replica a slot was taken on; its status and body.
    pub(crate) async fn forward_json(&self, admitted: &Admitted, model: &str, path: &str, body: &Value) -> Result<(u16, Bytes), String> {
        let replica = admitted.guard.replica;
        let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let resp = admitted.upstream.post(path, Bytes::from(bytes)).await.map_err(|e| self.upstream_failed(replica, model, &e))?;
        let status = resp.status;
        let bytes = resp.bytes().await.map_err(|e| self.upstream_failed(replica, model, &e))?;
        Ok((status, bytes))
    }

    /// Handles one chat, completion, embedding or Responses API request end to end.
    pub(crate) async fn handle(self: Arc<Self>, headers: CompletionHeaders, raw: Bytes, endpoint: Endpoint) -> Response {
        let Some(tenant) = self.tenant_of_key(headers.authorization.as_ref()) else {
            return Error::Unauthorized.into_response();
        };
        let facts = match RequestFacts::of_request(&raw, endpoint) {
            Ok(facts) => facts,
            Err(BodyError::NotAnObject) => return Error::invalid("the body must be a JSON object", "body").into_response(),
            Err(BodyError::Invalid(e)) => return Error::invalid(format!("invalid JSON body: {e}"), "body").into_response(),
        };
        if let Some((message, param)) = facts.problem_at(endpoint) {
            return Error::invalid(message, param).into_response();
        }
        let model = facts.model.as_deref().unwrap_or_default();
        let mut candidates = self.replicas_for(model);
        if candidates.is_empty() {
            return Error::ModelNotFound(model.to_string()).into_response();
        }
        if let Some(asked) = facts.max_output_tokens() {
            let limits: HashMap<ReplicaId, Option<u64>> = {
                let replicas = self.lock_replicas();
                candidates.iter().map(|c| (*c, replicas.get(*c).and_then(|r| r.spec.max_tokens))).collect()
            };
            let limit = |c: &ReplicaId| limits.get(c).copied().flatten();
            let most = candidates.iter().map(limit).try_fold(0u64, |most, l| l.map(|l| most.max(l)));
            if let Some(most) = most.filter(|most| asked > *most) {
                let field = output_limit_field(endpoint, &facts);
                return Error::invalid(format!("{field} is too large: {asked}. The replicas of `{model}` generate at most {most} tokens per request."), field).into_response();
            }
            candidates.retain(|i| limit(i).is_none_or(|l| asked <= l));
        }
        let base_tier = self.lock_tenants().get(tenant).map_or(Tier::Realtime, |t| t.tier);
        let tier = match headers.tier.map(|v| v.to_str().unwrap_or("").parse::<Tier>()) {
            None => base_tier,
            Some(Ok(t)) if t >= base_tier => t,
            Some(Ok(t)) => return Error::invalid(format!("tier {t} is above this key's tier {base_tier}; a header may only lower it"), "x-tidepool-tier").into_response(),
            Some(Err(e)) => return Error::invalid(e, "x-tidepool-tier").into_response(),
        };
        let stream = endpoint != Endpoint::Embeddings && facts.streamed();
        let estimate = facts.estimate(endpoint, DEFAULT_COMPLETION_ESTIMATE);
        let now = self.now_ms();
        {
            let mut tenants = self.lock_tenants();
            let Some(t) = tenants.get_mut(tenant) else { return Error::Unauthorized.into_response() };
            if let Err(wait) = t.rpm.take(1, now) {
                t.refused += 1;
                drop(tenants);
                self.count_refusal(tier, Refusal::Requests);
                return self.too_many(tenant, Some(wait), "Rate limit reached for requests per minute.", "requests", "rate_limit_exceeded");
            }
            if let Err(wait) = t.tpm.take(estimate, now) {
                let limit = t.tpm.capacity();
                t.rpm.give_back(1, now);
                t.refused += 1;
                drop(tenants);
                self.count_refusal(tier, Refusal::Tokens);
                if wait == Bucket::NEVER {
                    // No Retry-After: waiting never helps; a smaller request (or budget) does.
                    let message = format!(
                        "Request too large for {model} on tokens per minute (TPM): Limit {limit}, Requested {estimate}. The input or output tokens must be reduced in order to run successfully."
                    );
                    return self.too_many(tenant, None, &message, "tokens", "rate_limit_exceeded");
                }
                return self.too_many(tenant, Some(wait), "Rate limit reached for tokens per minute.", "tokens", "rate_limit_exceeded");
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
        let Admitted { upstream, guard, cut } = match self.clone().wait_for_slot(&candidates, tier, stream, wait_ms).await {
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
                return self.too_many(tenant, Some(wait), &format!("The {tier} tier is at capacity; retry later."), "requests", "server_overloaded");
            }
        };
        // The request goes on as the client wrote it (unknown fields included), not re-encoded.
        let replica = guard.replica;
        let resp = match upstream.post(endpoint.path(), raw).await {
            Ok(r) => r,
            Err(e) => {
                self.settle(tenant, estimate, 0, 0);
                return Error::Upstream(self.upstream_failed(replica, model, &e)).into_response();
            }
        };
        let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
        if !status.is_success() || !stream {
            let bytes = match resp.bytes().await {
                Ok(bytes) => bytes,
                Err(e) => {
                    drop(guard);
                    self.settle(tenant, estimate, 0, 0);
                    return Error::Upstream(self.upstream_failed(replica, model, &e)).into_response();
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

}

/// A slot taken on a replica: the replica's connections, the slot (released when dropped),
/// and the signal that cuts the request off for realtime work.
pub(crate) struct Admitted {
    pub upstream: Arc<Upstream>,
    pub guard: SlotGuard,
    pub cut: Arc<Notify>,
}

/// The header that lowers a request's tier.
pub(crate) const TIER_HEADER: HeaderName = HeaderName::from_static("x-tidepool-tier");
/// The request id on every answer: the client's when it sent one, else one made here.
pub(crate) const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

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

#[cfg(test)]
mod tests;
