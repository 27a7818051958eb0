//! The replica emulator: an OpenAI-compatible server whose pace follows a batching model, for
//! tests and benchmarks (`tidepool replica-emulator`).
//!
//! The model, so figures can be checked by hand. With `c` requests in flight on the replica and
//! best batch size `B`:
//! - time between tokens: `itl_ms * max(1, c / B)`. Throughput `c / itl` grows with `c` up to `B`
//!   and stays at `B / itl_ms` tokens per ms beyond it, while each request slows down;
//! - time to first token: `prompt_tokens * prefill_us_per_token / 1000` ms, then one token time;
//! - prompt tokens: characters / 4, rounded up (no tokenizer);
//! - output: `max_completion_tokens` or `max_tokens` tokens when given (`finish_reason: length`),
//!   else `default_output_tokens` (`finish_reason: stop`).

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Settings of one emulated replica.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// The model name it serves.
    pub model: String,
    /// Best batch size.
    pub best_concurrency: u32,
    /// Time between tokens at or below the best batch, ms.
    pub itl_ms: f64,
    /// Prefill cost per prompt token, µs.
    pub prefill_us_per_token: f64,
    /// Output length when the request sets none.
    pub default_output_tokens: u32,
}

impl Default for EmulatorConfig {
    fn default() -> EmulatorConfig {
        EmulatorConfig {
            model: "tidepool-demo".into(),
            best_concurrency: 22,
            itl_ms: 20.0,
            prefill_us_per_token: 100.0,
            default_output_tokens: 16,
        }
    }
}

struct Emulator {
    config: EmulatorConfig,
    in_flight: AtomicU32,
    next_id: AtomicU64,
    /// Requests served, for tests and reports.
    served: AtomicU64,
}

/// Holds one slot of the replica while it lives.
struct Slot(Arc<Emulator>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

const WORDS: [&str; 12] = [" The", " tide", " comes", " in", " and", " the", " pool", " fills", " with", " light", ",", " again"];

/// The emulator's routes.
pub fn router(config: EmulatorConfig) -> Router {
    let state = Arc::new(Emulator { config, in_flight: AtomicU32::new(0), next_id: AtomicU64::new(1), served: AtomicU64::new(0) });
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Runs an emulator on `listener` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, config: EmulatorConfig) -> std::io::Result<()> {
    axum::serve(listener, router(config)).await
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn models(State(e): State<Arc<Emulator>>) -> Response {
    axum::Json(json!({"object": "list", "data": [{"id": e.config.model, "object": "model", "created": 0, "owned_by": "tidepool-emulator"}]})).into_response()
}

async fn metrics(State(e): State<Arc<Emulator>>) -> String {
    format!(
        "emulator_in_flight {}\nemulator_requests_total {}\n",
        e.in_flight.load(Ordering::SeqCst),
        e.served.load(Ordering::SeqCst)
    )
}

fn bad(message: &str, param: &str) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": null}}))).into_response()
}

/// Prompt tokens of a chat or completion request: characters / 4.
pub fn prompt_tokens(body: &Value) -> u64 {
    let mut chars = 0usize;
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        for m in messages {
            match m.get("content") {
                Some(Value::String(s)) => chars += s.len(),
                Some(Value::Array(parts)) => {
                    chars += parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).map(str::len).sum::<usize>()
                }
                _ => {}
            }
        }
    }
    match body.get("prompt") {
        Some(Value::String(s)) => chars += s.len(),
        Some(Value::Array(items)) => chars += items.iter().filter_map(Value::as_str).map(str::len).sum::<usize>(),
        _ => {}
    }
    tokens_of_chars(chars)
}

/// Tokens of a prompt of `chars` characters: four to a token, at least one.
pub fn tokens_of_chars(chars: usize) -> u64 {
    (chars as u64).div_ceil(4).max(1)
}

/// How many tokens a request may produce per choice, if it says.
pub fn max_output_tokens(body: &Value) -> Option<u64> {
    body.get("max_completion_tokens").or_else(|| body.get("max_tokens")).and_then(Value::as_u64)
}

struct Plan {
    id: String,
    model: String,
    n: u64,
    n_tokens: u64,
    finish: &'static str,
    prompt_tokens: u64,
    logprobs: bool,
    top_logprobs: u64,
    include_usage: bool,
    echo: Option<String>,
}

fn plan(e: &Emulator, body: &Value, chat: bool) -> Result<Plan, Response> {
    let model = body.get("model").and_then(Value::as_str).ok_or_else(|| bad("you must provide a model parameter", "model"))?;
    if chat && !body.get("messages").is_some_and(Value::is_array) {
        return Err(bad("'messages' is a required property", "messages"));
    }
    if !chat && body.get("prompt").is_none() {
        return Err(bad("'prompt' is a required property", "prompt"));
    }
    let n = body.get("n").and_then(Value::as_u64).unwrap_or(1).clamp(1, 16);
    let (n_tokens, finish) = match max_output_tokens(body) {
        Some(m) => (m, "length"),
        None => (u64::from(e.config.default_output_tokens), "stop"),
    };
    let logprobs = if chat {
        body.get("logprobs").and_then(Value::as_bool).unwrap_or(false)
    } else {
        body.get("logprobs").is_some_and(|v| !v.is_null())
    };
    let top_logprobs = body
        .get("top_logprobs")
        .and_then(Value::as_u64)
        .or_else(|| if chat { None } else { body.get("logprobs").and_then(Value::as_u64) })
        .unwrap_or(0)
        .min(20);
    let id = e.next_id.fetch_add(1, Ordering::SeqCst);
    Ok(Plan {
        id: if chat { format!("chatcmpl-emu{id}") } else { format!("cmpl-emu{id}") },
        model: model.to_string(),
        n,
        n_tokens,
        finish,
        prompt_tokens: prompt_tokens(body),
        logprobs,
        top_logprobs,
        include_usage: body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false),
        echo: if !chat && body.get("echo").and_then(Value::as_bool).unwrap_or(false) {
            body.get("prompt").and_then(Value::as_str).map(str::to_string)
        } else {
            None
        },
    })
}

fn token(i: u64) -> &'static str {
    WORDS[(i % WORDS.len() as u64) as usize]
}

fn chat_logprobs(tokens: &[&str], top: u64) -> Value {
    json!({"content": tokens.iter().map(|t| json!({
        "token": t, "logprob": -0.25, "bytes": t.as_bytes(),
        "top_logprobs": (0..top).map(|k| json!({"token": token(k), "logprob": -0.25 - k as f64, "bytes": token(k).as_bytes()})).collect::<Vec<_>>()
    })).collect::<Vec<_>>()})
}

fn completion_logprobs(tokens: &[&str], top: u64, offset: usize) -> Value {
    let mut offsets = Vec::new();
    let mut at = offset;
    for t in tokens {
        offsets.push(at);
        at += t.len();
    }
    json!({
        "tokens": tokens,
        "token_logprobs": tokens.iter().map(|_| -0.25).collect::<Vec<_>>(),
        "top_logprobs": tokens.iter().map(|_| (0..top.max(1)).map(|k| (token(k).to_string(), json!(-0.25 - k as f64))).collect::<serde_json::Map<String, Value>>()).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

impl Emulator {
    fn itl(&self) -> Duration {
        let c = f64::from(self.in_flight.load(Ordering::SeqCst).max(1));
        let b = f64::from(self.config.best_concurrency.max(1));
        Duration::from_secs_f64(self.config.itl_ms * (c / b).max(1.0) / 1000.0)
    }

    fn prefill(&self, prompt_tokens: u64) -> Duration {
        Duration::from_secs_f64(prompt_tokens as f64 * self.config.prefill_us_per_token / 1e6)
    }
}

async fn chat(State(e): State<Arc<Emulator>>, body: Bytes) -> Response {
    respond(e, body, true).await
}

async fn completions(State(e): State<Arc<Emulator>>, body: Bytes) -> Response {
    respond(e, body, false).await
}

async fn respond(e: Arc<Emulator>, body: Bytes, chat: bool) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(err) => return bad(&format!("invalid JSON: {err}"), "body"),
    };
    let p = match plan(&e, &body, chat) {
        Ok(p) => p,
        Err(r) => return r,
    };
    e.in_flight.fetch_add(1, Ordering::SeqCst);
    e.served.fetch_add(1, Ordering::SeqCst);
    let slot = Slot(e.clone());
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let created = now_s();
    let usage = json!({"prompt_tokens": p.prompt_tokens, "completion_tokens": p.n_tokens * p.n, "total_tokens": p.prompt_tokens + p.n_tokens * p.n});
    if !stream {
        tokio::time::sleep(e.prefill(p.prompt_tokens)).await;
        for _ in 0..p.n_tokens {
            tokio::time::sleep(e.itl()).await;
        }
        drop(slot);
        let tokens: Vec<&str> = (0..p.n_tokens).map(token).collect();
        let text: String = tokens.concat();
        let choices: Vec<Value> = (0..p.n)
            .map(|i| {
                if chat {
                    json!({"index": i, "message": {"role": "assistant", "content": text, "refusal": null},
                        "logprobs": if p.logprobs { chat_logprobs(&tokens, p.top_logprobs) } else { Value::Null },
                        "finish_reason": p.finish})
                } else {
                    let prefix = p.echo.clone().unwrap_or_default();
                    json!({"index": i, "text": format!("{prefix}{text}"),
                        "logprobs": if p.logprobs { completion_logprobs(&tokens, p.top_logprobs, prefix.len()) } else { Value::Null },
                        "finish_reason": p.finish})
                }
            })
            .collect();
        let object = if chat { "chat.completion" } else { "text_completion" };
        return axum::Json(json!({"id": p.id, "object": object, "created": created, "model": p.model,
            "system_fingerprint": "emulator", "choices": choices, "usage": usage}))
        .into_response();
    }
    let object = if chat { "chat.completion.chunk" } else { "text_completion" };
    let events = futures_util::stream::unfold((0u64, slot, p, false), move |(step, slot, p, done)| {
        let e = slot.0.clone();
        async move {
            if done {
                return None;
            }
            let chunk = |choices: Value, usage: Value| {
                let mut v = json!({"id": p.id, "object": object, "created": created, "model": p.model, "system_fingerprint": "emulator", "choices": choices});
                if !usage.is_null() {
                    v["usage"] = usage;
                }
                Bytes::from(format!("data: {v}\n\n"))
            };
            let mut out = Vec::new();
            if step == 0 {
                tokio::time::sleep(e.prefill(p.prompt_tokens)).await;
                if chat {
                    let choices: Vec<Value> = (0..p.n).map(|i| json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null})).collect();
                    out.push(chunk(json!(choices), Value::Null));
                } else if let Some(prefix) = &p.echo {
                    let choices: Vec<Value> = (0..p.n).map(|i| json!({"index": i, "text": prefix, "logprobs": null, "finish_reason": null})).collect();
                    out.push(chunk(json!(choices), Value::Null));
                }
            }
            if step < p.n_tokens {
                tokio::time::sleep(e.itl()).await;
                let t = token(step);
                let choices: Vec<Value> = (0..p.n)
                    .map(|i| {
                        if chat {
                            json!({"index": i, "delta": {"content": t}, "logprobs": if p.logprobs { chat_logprobs(&[t], p.top_logprobs) } else { Value::Null }, "finish_reason": null})
                        } else {
                            json!({"index": i, "text": t, "logprobs": if p.logprobs { completion_logprobs(&[t], p.top_logprobs, 0) } else { Value::Null }, "finish_reason": null})
                        }
                    })
                    .collect();
                out.push(chunk(json!(choices), Value::Null));
                let bytes: Vec<u8> = out.concat();
                return Some((Ok::<Bytes, std::io::Error>(Bytes::from(bytes)), (step + 1, slot, p, false)));
            }
            let choices: Vec<Value> = (0..p.n)
                .map(|i| if chat { json!({"index": i, "delta": {}, "logprobs": null, "finish_reason": p.finish}) } else { json!({"index": i, "text": "", "logprobs": null, "finish_reason": p.finish}) })
                .collect();
            out.push(chunk(json!(choices), Value::Null));
            if p.include_usage {
                let usage = json!({"prompt_tokens": p.prompt_tokens, "completion_tokens": p.n_tokens * p.n, "total_tokens": p.prompt_tokens + p.n_tokens * p.n});
                out.push(chunk(json!([]), usage));
            }
            out.push(Bytes::from_static(b"data: [DONE]\n\n"));
            let bytes: Vec<u8> = out.concat();
            Some((Ok(Bytes::from(bytes)), (step + 1, slot, p, true)))
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(events))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
