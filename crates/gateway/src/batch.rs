//! OpenAI's Files and Batches APIs: uploads kept in SQLite, batches journaled there too, run at
//! the `offline` tier through the same admission as online traffic, resumed after a restart.
//!
//! Batch requests use the replicas' spare slots only and are not charged to the tenant's online
//! TPM budget; a refused request waits for its Retry-After and tries again.

use crate::error::Error;
use crate::gateway::Gateway;
use crate::request::{Endpoint, RequestFacts};
use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tidepool_core::Tier;
use tidepool_store::batches::FileMeta;

/// Largest upload accepted.
pub const MAX_FILE_BYTES: usize = 200 << 20;
/// Requests of one batch in flight at once.
const BATCH_CONCURRENCY: usize = 64;
const ENDPOINTS: [&str; 4] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"];


fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A random id with a prefix (`file-`, `batch_`).
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 12];
    if let Err(e) = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
        // Never all zeros: the clock and a count keep ids distinct, if guessable.
        tracing::warn!("ids from the clock: /dev/urandom: {e}");
        static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes[..8].copy_from_slice(&now.to_be_bytes());
        bytes[8..].copy_from_slice(&((n as u32) ^ std::process::id()).to_be_bytes());
    }
    format!("{prefix}{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn file_object(m: &FileMeta) -> Value {
    json!({"id": m.id, "object": "file", "bytes": m.bytes, "created_at": m.created_at, "filename": m.filename,
        "purpose": m.purpose, "status": "processed", "status_details": null, "expires_at": null})
}

/// OpenAI's list page: newest first, `after` an id, `limit` items.
fn page(items: Vec<Value>, q: &HashMap<String, String>, default_limit: usize, max_limit: usize) -> Result<Value, Error> {
    let limit = match q.get("limit") {
        Some(l) => l.parse::<usize>().ok().filter(|l| (1..=max_limit).contains(l)).ok_or_else(|| {
            Error::invalid(format!("limit must be an integer from 1 to {max_limit}"), "limit")
        })?,
        None => default_limit,
    };
    let start = match q.get("after") {
        Some(after) => items.iter().position(|v| v["id"] == after.as_str()).map(|i| i + 1).unwrap_or(items.len()),
        None => 0,
    };
    let data: Vec<Value> = items.iter().skip(start).take(limit).cloned().collect();
    let has_more = items.len() > start + data.len();
    Ok(json!({"object": "list", "data": data, "first_id": data.first().map(|v| v["id"].clone()),
        "last_id": data.last().map(|v| v["id"].clone()), "has_more": has_more}))
}

impl Gateway {
    fn tenant_name(&self, headers: &HeaderMap) -> Result<String, Error> {
        self.tenant_of(headers).and_then(|i| self.config().tenants.get(i)).map(|t| t.name.clone()).ok_or(Error::Unauthorized)
    }

    fn save_batch(&self, tenant: &str, batch: &Value) {
        let id = batch["id"].as_str().unwrap_or_default();
        let created = batch["created_at"].as_u64().unwrap_or(0);
        if let Err(e) = self.with_store(|s| s.put_batch(id, tenant, created, &batch.to_string())) {
            tracing::error!(batch = id, error = %e, "cannot save batch");
        }
    }
}

/// A handler's answer.
type Answer = Result<Response, Error>;

/// The store could not be used.
fn unavailable(e: String) -> Error {
    Error::Unavailable(e)
}

fn bad(message: &str, param: &str) -> Error {
    Error::invalid(message, param)
}

/// `POST /v1/files` (multipart: `file`, `purpose`).
pub async fn upload(State(g): State<Arc<Gateway>>, headers: HeaderMap, mut form: Multipart) -> Answer {
    let tenant = g.tenant_name(&headers)?;
    let mut purpose = None;
    let mut file: Option<(String, Bytes)> = None;
    while let Some(field) = form.next_field().await.map_err(|e| bad(&format!("invalid multipart body: {e}"), "file"))? {
        let name = field.name().unwrap_or("").to_string();
        let filename = field.file_name().unwrap_or("upload.jsonl").to_string();
        let data = field.bytes().await.map_err(|e| bad(&format!("unreadable form field {name}: {e}"), &name))?;
        match name.as_str() {
            "purpose" => purpose = Some(String::from_utf8_lossy(&data).to_string()),
            "file" => file = Some((filename, data)),
            _ => {}
        }
    }
    let purpose = purpose.ok_or_else(|| bad("'purpose' is required", "purpose"))?;
    if !["batch", "fine-tune", "assistants", "vision", "user_data", "evals"].contains(&purpose.as_str()) {
        return Err(bad(&format!("'{purpose}' is not a valid purpose"), "purpose"));
    }
    let (filename, data) = file.ok_or_else(|| bad("'file' is required", "file"))?;
    if data.len() > MAX_FILE_BYTES {
        return Err(bad("the file is larger than 200 MB", "file"));
    }
    let meta = FileMeta { id: new_id("file-"), tenant, purpose, filename, bytes: data.len() as u64, created_at: now_s() };
    g.with_store(|s| s.put_file(&meta, &data)).map_err(unavailable)?;
    Ok(axum::Json(file_object(&meta)).into_response())
}

/// `GET /v1/files`.
pub async fn list_files(State(g): State<Arc<Gateway>>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Answer {
    let tenant = g.tenant_name(&headers)?;
    let files = g.with_store(|s| s.files(&tenant)).map_err(unavailable)?;
    let items: Vec<Value> = files.iter().filter(|f| q.get("purpose").is_none_or(|p| &f.purpose == p)).map(file_object).collect();
    Ok(axum::Json(page(items, &q, 10_000, 10_000)?).into_response())
}

fn owned_file(g: &Gateway, tenant: &str, id: &str) -> Result<FileMeta, Error> {
    match g.with_store(|s| s.file(id)).map_err(unavailable)? {
        Some(m) if m.tenant == tenant => Ok(m),
        _ => Err(Error::NotFound { message: format!("No such File object: {id}"), param: "file_id" }),
    }
}

/// `GET /v1/files/{id}`.
pub async fn get_file(State(g): State<Arc<Gateway>>, headers: HeaderMap, Path(id): Path<String>) -> Answer {
    let tenant = g.tenant_name(&headers)?;
    Ok(axum::Json(file_object(&owned_file(&g, &tenant, &id)?)).into_response())
}

/// `GET /v1/files/{id}/content`.
pub async fn file_content(State(g): State<Arc<Gateway>>, headers: HeaderMap, Path(id): Path<String>) -> Answer {
    let tenant = g.tenant_name(&headers)?;
    owned_file(&g, &tenant, &id)?;
    match g.with_store(|s| s.file_content(&id)).map_err(unavailable)? {
        Some(bytes) => Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()),
        None => Err(Error::NotFound { message: format!("No such File object: {id}"), param: "file_id" }),
    }
}

/// `DELETE /v1/files/{id}`.
pub async fn delete_file(State(g): State<Arc<Gateway>>, headers: HeaderMap, Path(id): Path<String>) -> Answer {
    let tenant = g.tenant_name(&headers)?;
    owned_file(&g, &tenant, &id)?;
    g.with_store(|s| s.delete_file(&id)).map_err(unavailable)?;
    Ok(axum::Json(json!({"id": id, "object": "file", "deleted": true})).into_response())
}

/// `POST /v1/batches`.
pub async fn create_batch(State(g): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> Answer {
    let tenant = g.tenant_name(&headers)?;
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return Err(bad("the body must be a JSON object", "body")),
    };
    let input = req.get("input_file_id").and_then(Value::as_str).ok_or_else(|| bad("'input_file_id' is required", "input_file_id"))?;
    let endpoint = req.get("endpoint").and_then(Value::as_str).unwrap_or("");
    if !ENDPOINTS.contains(&endpoint) {
        return Err(bad(&format!("endpoint must be one of {}", ENDPOINTS.join(", ")), "endpoint"));
    }
    if req.get("completion_window").and_then(Value::as_str) != Some("24h") {
        return Err(bad("completion_window must be 24h", "completion_window"));
    }
    let metadata = req.get("metadata").cloned().unwrap_or(Value::Null);
    if !(metadata.is_null() || metadata.is_object()) {
        return Err(bad("metadata must be an object", "metadata"));
    }
    if owned_file(&g, &tenant, input)?.purpose != "batch" {
        return Err(bad("the input file's purpose must be 'batch'", "input_file_id"));
    }
    let now = now_s();
    let batch = json!({
        "id": new_id("batch_"), "object": "batch", "endpoint": endpoint, "errors": null, "input_file_id": input,
        "completion_window": "24h", "status": "validating", "output_file_id": null, "error_file_id": null,
        "created_at": now, "in_progress_at": null, "expires_at": now + 86_400, "finalizing_at": null,
        "completed_at": null, "failed_at": null, "expired_at": null, "cancelling_at": null, "cancelled_at": null,
        "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": metadata,
        "model": null, "usage": usage_object(0, 0),
    });
    g.save_batch(&tenant, &batch);
    spawn_runner(g.clone(), tenant, batch["id"].as_str().unwrap_or_default().to_string());
    Ok(axum::Json(batch).into_response())
}

fn owned_batch(g: &Gateway, tenant: &str, id: &str) -> Result<Value, Error> {
    match g.with_store(|s| s.batch(id)).map_err(unavailable)? {
        Some((owner, object)) if owner == tenant => {
            serde_json::from_str(&object).map_err(|e| Error::Internal(format!("batch {id} is stored damaged: {e}")))
        }
        _ => Err(Error::NotFound { message: format!("No such Batch object: {id}"), param: "batch_id" }),
    }
}

/// `GET /v1/batches/{id}`.
pub async fn get_batch(State(g): State<Arc<Gateway>>, headers: HeaderMap, Path(id): Path<String>) -> Answer {
    let tenant = g.tenant_name(&headers)?;
    Ok(axum::Json(owned_batch(&g, &tenant, &id)?).into_response())
}

/// `GET /v1/batches`.
pub async fn list_batches(State(g): State<Arc<Gateway>>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Answer {
    let tenant = g.tenant_name(&headers)?;
    let list = g.with_store(|s| s.batches(&tenant)).map_err(unavailable)?;
    let items: Vec<Value> = list.iter().filter_map(|o| serde_json::from_str(o).ok()).collect();
    Ok(axum::Json(page(items, &q, 20, 100)?).into_response())
}

/// `POST /v1/batches/{id}/cancel`.
pub async fn cancel_batch(State(g): State<Arc<Gateway>>, headers: HeaderMap, Path(id): Path<String>) -> Answer {
    let tenant = g.tenant_name(&headers)?;
    let mut batch = owned_batch(&g, &tenant, &id)?;
    let status = batch["status"].as_str().unwrap_or("").to_string();
    if !["validating", "in_progress", "finalizing"].contains(&status.as_str()) {
        return Err(Error::Conflict(format!("Cannot cancel a batch with status '{status}'.")));
    }
    batch["status"] = json!("cancelling");
    batch["cancelling_at"] = json!(now_s());
    g.save_batch(&tenant, &batch);
    if let Some(flag) = g.cancel_flags().lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
        flag.store(true, Ordering::SeqCst);
    }
    Ok(axum::Json(batch).into_response())
}

/// Resumes every batch that had not ended when the gateway stopped.
pub fn resume_all(g: Arc<Gateway>) {
    // A gateway for online traffic only is a normal set-up, not an error at every start.
    if !g.has_store() {
        tracing::info!("files and batches are off: the config sets no data_dir");
        return;
    }
    let batches = match g.with_store(|s| s.all_batches()) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot read batches");
            return;
        }
    };
    for (id, tenant, object) in batches {
        let status = serde_json::from_str::<Value>(&object).ok().and_then(|v| v["status"].as_str().map(str::to_string));
        if matches!(status.as_deref(), Some("validating" | "in_progress" | "finalizing" | "cancelling")) {
            tracing::info!(batch = %id, "resuming batch");
            spawn_runner(g.clone(), tenant, id);
        }
    }
}

fn spawn_runner(g: Arc<Gateway>, tenant: String, id: String) {
    let flag = Arc::new(AtomicBool::new(false));
    g.cancel_flags().lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), flag.clone());
    tokio::spawn(async move {
        if let Err(e) = run_batch(g.clone(), &tenant, &id, flag).await {
            tracing::error!(batch = %id, error = %e, "batch runner stopped");
        }
        g.cancel_flags().lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    });
}

/// One request line of a batch input file.
struct Line {
    custom_id: String,
    body: Value,
}

fn parse_input(text: &str, endpoint: &str) -> Result<Vec<Line>, Vec<Value>> {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (n, raw) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let line_no = n + 1;
        let mut fail = |code: &str, message: String| errors.push(json!({"code": code, "message": message, "param": null, "line": line_no}));
        let Ok(v) = serde_json::from_str::<Value>(raw) else {
            fail("invalid_json_line", format!("line {line_no} is not valid JSON"));
            continue;
        };
        let Some(custom_id) = v.get("custom_id").and_then(Value::as_str) else {
            fail("missing_required_parameter", format!("line {line_no} has no custom_id"));
            continue;
        };
        if !seen.insert(custom_id.to_string()) {
            fail("duplicate_custom_id", format!("custom_id '{custom_id}' appears twice"));
            continue;
        }
        if v.get("method").and_then(Value::as_str) != Some("POST") {
            fail("invalid_method", format!("line {line_no}: method must be POST"));
            continue;
        }
        if v.get("url").and_then(Value::as_str) != Some(endpoint) {
            fail("mismatched_url", format!("line {line_no}: url must be the batch's endpoint {endpoint}"));
            continue;
        }
        let Some(body) = v.get("body").filter(|b| b.is_object()) else {
            fail("invalid_request", format!("line {line_no}: body must be an object"));
            continue;
        };
        if body.get("model").and_then(Value::as_str).is_none() {
            fail("missing_required_parameter", format!("line {line_no}: body.model is required"));
            continue;
        }
        lines.push(Line { custom_id: custom_id.to_string(), body: body.clone() });
    }
    if lines.is_empty() && errors.is_empty() {
        errors.push(json!({"code": "empty_file", "message": "the input file has no requests", "param": null, "line": null}));
    }
    if errors.is_empty() {
        Ok(lines)
    } else {
        Err(errors)
    }
}

async fn run_batch(g: Arc<Gateway>, tenant: &str, id: &str, cancelled: Arc<AtomicBool>) -> Result<(), String> {
    let load = |g: &Gateway| -> Result<Value, String> {
        let (_, object) = g.with_store(|s| s.batch(id))?.ok_or("batch vanished")?;
        serde_json::from_str(&object).map_err(|e| e.to_string())
    };
    let mut batch = load(&g)?;
    let endpoint = batch["endpoint"].as_str().unwrap_or("/v1/chat/completions").to_string();
    let input_id = batch["input_file_id"].as_str().unwrap_or_default().to_string();
    let Some(content) = g.with_store(|s| s.file_content(&input_id))? else {
        // Deleted since the batch was made: the batch fails saying why, rather than completing
        // with nothing.
        batch["status"] = json!("failed");
        batch["failed_at"] = json!(now_s());
        batch["errors"] = json!({"object": "list", "data": [{"code": "invalid_input_file", "message": format!("the input file {input_id} no longer exists"), "param": "input_file_id", "line": null}]});
        g.save_batch(tenant, &batch);
        return Ok(());
    };
    let lines = match parse_input(&String::from_utf8_lossy(&content), &endpoint) {
        Ok(lines) => lines,
        Err(errors) => {
            batch["status"] = json!("failed");
            batch["failed_at"] = json!(now_s());
            batch["errors"] = json!({"object": "list", "data": errors});
            g.save_batch(tenant, &batch);
            return Ok(());
        }
    };
    if batch["model"].is_null() {
        // The model of its requests (the first line's, when they differ).
        batch["model"] = lines.first().and_then(|l| l.body.get("model").cloned()).unwrap_or(Value::Null);
    }
    if batch["status"] == "validating" {
        batch["status"] = json!("in_progress");
        batch["in_progress_at"] = json!(now_s());
        batch["request_counts"] = json!({"total": lines.len(), "completed": 0, "failed": 0});
        g.save_batch(tenant, &batch);
    }
    let done: HashSet<u64> = g.with_store(|s| s.results(id))?.into_iter().map(|(l, _, _)| l).collect();
    let todo: Vec<usize> = (0..lines.len()).filter(|i| !done.contains(&(*i as u64))).collect();
    let lines = Arc::new(lines);
    let mut running = tokio::task::JoinSet::new();
    let mut next = 0;
    let mut last_save = std::time::Instant::now();
    loop {
        let stop = cancelled.load(Ordering::SeqCst) || batch["status"] == "cancelling";
        while !stop && next < todo.len() && running.len() < BATCH_CONCURRENCY {
            let (g2, lines2, line, id2, endpoint2, tenant2) =
                (g.clone(), lines.clone(), todo[next], id.to_string(), endpoint.clone(), tenant.to_string());
            running.spawn(async move { run_line(g2, &tenant2, &id2, &endpoint2, line, &lines2[line]).await });
            next += 1;
        }
        if running.join_next().await.is_none() {
            break;
        }
        if last_save.elapsed().as_millis() > 500 {
            update_counts(&g, id, &mut batch)?;
            g.save_batch(tenant, &batch);
            last_save = std::time::Instant::now();
        }
    }
    let was_cancelled = cancelled.load(Ordering::SeqCst) || batch["status"] == "cancelling";
    if !was_cancelled {
        batch["status"] = json!("finalizing");
        batch["finalizing_at"] = json!(now_s());
        update_counts(&g, id, &mut batch)?;
        g.save_batch(tenant, &batch);
    }
    // Output and error files, in input order.
    let results = g.with_store(|s| s.results(id))?;
    let mut out = String::new();
    let mut errs = String::new();
    for (_, ok, body) in &results {
        let target = if *ok { &mut out } else { &mut errs };
        target.push_str(body);
        target.push('\n');
    }
    let store_file = |text: &str, purpose: &str, name: &str| -> Result<Value, String> {
        if text.is_empty() {
            return Ok(Value::Null);
        }
        let meta = FileMeta { id: new_id("file-"), tenant: tenant.to_string(), purpose: purpose.into(), filename: format!("{id}_{name}.jsonl"), bytes: text.len() as u64, created_at: now_s() };
        g.with_store(|s| s.put_file(&meta, text.as_bytes()))?;
        Ok(json!(meta.id))
    };
    batch["output_file_id"] = store_file(&out, "batch_output", "output")?;
    batch["error_file_id"] = store_file(&errs, "batch_output", "error")?;
    update_counts(&g, id, &mut batch)?;
    if was_cancelled {
        batch["status"] = json!("cancelled");
        batch["cancelled_at"] = json!(now_s());
    } else {
        batch["status"] = json!("completed");
        batch["completed_at"] = json!(now_s());
    }
    g.save_batch(tenant, &batch);
    tracing::info!(batch = id, status = %batch["status"], "batch ended");
    Ok(())
}

/// A batch's `usage`, as OpenAI's batch object has it.
fn usage_object(input: u64, output: u64) -> Value {
    json!({
        "input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output,
    })
}

fn update_counts(g: &Gateway, id: &str, batch: &mut Value) -> Result<(), String> {
    let results = g.with_store(|s| s.results(id))?;
    let completed = results.iter().filter(|(_, ok, _)| *ok).count();
    batch["request_counts"]["completed"] = json!(completed);
    batch["request_counts"]["failed"] = json!(results.len() - completed);
    let (mut input, mut output) = (0u64, 0u64);
    for (_, _, record) in &results {
        let record: Value = serde_json::from_str(record).unwrap_or(Value::Null);
        let usage = record["response"]["body"].get("usage").cloned().and_then(|u| serde_json::from_value::<tidepool_api::gateway::TokenUsage>(u).ok());
        if let Some(u) = usage {
            input += u.prompt_tokens;
            output += u.completion_tokens;
        }
    }
    batch["usage"] = usage_object(input, output);
    // A cancel may have been written by the API meanwhile: keep it.
    if let Ok(Some((_, stored))) = g.with_store(|s| s.batch(id)) {
        if let Ok(v) = serde_json::from_str::<Value>(&stored) {
            if v["status"] == "cancelling" && batch["status"] != "cancelled" {
                batch["status"] = json!("cancelling");
                batch["cancelling_at"] = v["cancelling_at"].clone();
            }
        }
    }
    Ok(())
}

async fn run_line(g: Arc<Gateway>, tenant: &str, batch_id: &str, endpoint: &str, line: usize, req: &Line) -> Result<(), String> {
    let model = req.body.get("model").and_then(Value::as_str).unwrap_or_default().to_string();
    let mut body = req.body.clone();
    if let Some(obj) = body.as_object_mut() {
        obj.insert("stream".into(), json!(false));
    }
    let record_id = format!("batch_req_{}_{line}", batch_id.trim_start_matches("batch_"));
    let candidates = g.replicas_for(&model);
    // A line the gateway would refuse online is answered as it would be, without a slot.
    let problem = Endpoint::of(endpoint).and_then(|at| {
        let raw = serde_json::to_vec(&req.body).ok()?;
        RequestFacts::of_request(&raw, at).ok()?.problem_at(at)
    });
    let (ok, record) = if let Some((message, param)) = problem {
        let error = crate::openai::error_object(&message, "invalid_request_error", Some(param), None);
        (false, json!({"id": record_id, "custom_id": req.custom_id, "response": {"status_code": 400, "request_id": new_id("req_"), "body": error}, "error": null}))
    } else if candidates.is_empty() {
        (false, json!({"id": record_id, "custom_id": req.custom_id, "response": null,
            "error": {"code": "model_not_found", "message": format!("The model `{model}` does not exist.")}}))
    } else {
        loop {
            // No slot within the wait: ask again, of the replicas serving the model by then.
            let candidates = g.replicas_for(&model);
            if let Ok(admitted) = g.clone().wait_for_slot(&candidates, Tier::Offline, false, 60_000).await {
                {
                    let answer = g.forward_json(&admitted, &model, endpoint, &body).await;
                    drop(admitted);
                    match answer {
                        Ok((status, bytes)) => {
                            let parsed: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                            g.account_usage(tenant, &parsed);
                            let record = json!({"id": record_id, "custom_id": req.custom_id,
                                "response": {"status_code": status, "request_id": new_id("req_"), "body": parsed}, "error": null});
                            break ((200..300).contains(&status), record);
                        }
                        Err(e) => {
                            tracing::warn!(batch = batch_id, line, error = %e, "batch request failed; retrying");
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        }
    };
    g.with_store(|s| s.put_result(batch_id, line as u64, ok, &record.to_string()))
}
