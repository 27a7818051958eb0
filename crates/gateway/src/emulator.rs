//! The replica emulator: an OpenAI-compatible server whose pace follows a batching model, for
//! tests and benchmarks (`tidepool replica-emulator`).
//!
//! The model, so figures can be checked by hand. With `c` requests in flight on the replica and
//! best batch size `B`:
//! - time between tokens: `itl_ms * max(1, c / B)`. Throughput `c / itl` grows with `c` up to `B`
//!   and stays at `B / itl_ms` tokens per ms beyond it, while each request slows down;
//! - time to first token: `prompt_tokens * prefill_us_per_token / 1000` ms, then one token time;
//! - prompt tokens: characters / 4, rounded up (no tokenizer), plus one per token id given;
//! - choices: `n` for each prompt (a completion's `prompt` may be an array of prompts), as
//!   OpenAI numbers them: prompt `p`'s choices have indexes `p * n` to `p * n + n - 1`; a
//!   stream carries each choice's delta in a chunk of its own, as OpenAI's does;
//! - output: `max_completion_tokens` or `max_tokens` tokens when given (`finish_reason: length`),
//!   else `default_output_tokens` (`finish_reason: stop`).
//! - responses (`/v1/responses`): one assistant message of output text, paced as a chat
//!   completion; `input` and `instructions` are the prompt; with `max_output_tokens` that many
//!   tokens and status `incomplete` (reason `max_output_tokens`), else `default_output_tokens`
//!   and `completed`; streamed as OpenAI's typed events, from `response.created` to
//!   `response.completed` (or `response.incomplete`);
//! - embeddings: one unit vector per input (`dimensions` long, 64 when not given) after the
//!   input's prefill time, as floats or as base64 of little-endian f32s (`encoding_format`).

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use crate::error::Error;
use crate::openai::{event_stream, model_object};
use crate::request::{BodyError, Endpoint, RequestFacts};

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
    /// The bearer key every request must carry, when set (the gateway in front holds it).
    pub api_key: Option<String>,
}

impl Default for EmulatorConfig {
    fn default() -> EmulatorConfig {
        EmulatorConfig {
            model: "tidepool-demo".into(),
            best_concurrency: 22,
            itl_ms: 20.0,
            prefill_us_per_token: 100.0,
            default_output_tokens: 16,
            api_key: None,
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

impl Slot {
    /// A slot for one more request, counted as served.
    fn taken(e: &Arc<Emulator>) -> Slot {
        e.in_flight.fetch_add(1, Ordering::SeqCst);
        e.served.fetch_add(1, Ordering::SeqCst);
        Slot(e.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

const WORDS: [&str; 12] = [" The", " tide", " comes", " in", " and", " the", " pool", " fills", " with", " light", ",", " again"];

/// The emulator's routes.
pub fn router(config: EmulatorConfig) -> Router {
    let key = config.api_key.clone();
    let state = Arc::new(Emulator { config, in_flight: AtomicU32::new(0), next_id: AtomicU64::new(1), served: AtomicU64::new(0) });
    let wants_key = move |request: axum::extract::Request, next: axum::middleware::Next| {
        let key = key.clone();
        async move {
            if let Some(want) = &key {
                let given = request.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
                if !given.is_some_and(|g| tidepool_api::same_secret(g.trim(), want)) {
                    return Error::Unauthorized.into_response();
                }
            }
            next.run(request).await
        }
    };
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn(wants_key))
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
    axum::Json(json!({"object": "list", "data": [model_object(&e.config.model, "tidepool-emulator")]})).into_response()
}

async fn model(State(e): State<Arc<Emulator>>, axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    if name != e.config.model {
        return Error::ModelNotFound(name).into_response();
    }
    axum::Json(model_object(&e.config.model, "tidepool-emulator")).into_response()
}

async fn metrics(State(e): State<Arc<Emulator>>) -> String {
    format!(
        "emulator_in_flight {}\nemulator_requests_total {}\n",
        e.in_flight.load(Ordering::SeqCst),
        e.served.load(Ordering::SeqCst)
    )
}

struct Plan {
    id: String,
    model: String,
    /// Choices in all: `n` for each prompt.
    n: u64,
    n_tokens: u64,
    finish: &'static str,
    prompt_tokens: u64,
    logprobs: bool,
    top_logprobs: u64,
    include_usage: bool,
    /// With `echo`, the text of each prompt (empty for token ids, which it cannot decode).
    echo: Option<Vec<String>>,
    /// `n`, the choices of each prompt.
    per_prompt: u64,
    stream: bool,
}

/// The facts of a body valid for `endpoint`, or the 400 that says what is wrong with it.
fn valid_facts(raw: &[u8], endpoint: Endpoint) -> Result<RequestFacts, Response> {
    let facts = match RequestFacts::of_request(raw, endpoint) {
        Ok(facts) => facts,
        Err(BodyError::NotAnObject) => return Err(Error::invalid("the body must be a JSON object", "body").into_response()),
        Err(BodyError::Invalid(err)) => return Err(Error::invalid(format!("invalid JSON: {err}"), "body").into_response()),
    };
    match facts.problem_at(endpoint) {
        Some((message, param)) => Err(Error::invalid(message, param).into_response()),
        None => Ok(facts),
    }
}

fn plan(e: &Emulator, raw: &[u8], chat: bool) -> Result<Plan, Response> {
    let facts = valid_facts(raw, if chat { Endpoint::Chat } else { Endpoint::Completions })?;
    // Valid JSON by now: the rest is read from the parsed body.
    let body: Value = serde_json::from_slice(raw).unwrap_or_default();
    let per_prompt = facts.choices();
    let (n_tokens, finish) = match facts.max_output_tokens() {
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
    let echo = (!chat && body.get("echo").and_then(Value::as_bool).unwrap_or(false)).then(|| match body.get("prompt") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(Value::Array(items)) if items.iter().all(Value::is_array) => vec![String::new(); items.len()],
        _ => vec![String::new()],
    });
    let id = e.next_id.fetch_add(1, Ordering::SeqCst);
    Ok(Plan {
        id: if chat { format!("chatcmpl-emu{id}") } else { format!("cmpl-emu{id}") },
        model: facts.model.clone().unwrap_or_default(),
        n: per_prompt * facts.prompts(),
        n_tokens,
        finish,
        prompt_tokens: facts.prompt_tokens(),
        logprobs,
        top_logprobs,
        include_usage: body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false),
        echo,
        per_prompt,
        stream: facts.streamed(),
    })
}

impl Plan {
    /// What choice `i` echoes of its prompt.
    fn echoed(&self, i: u64) -> Option<&str> {
        let prompts = self.echo.as_ref()?;
        prompts.get((i / self.per_prompt.max(1)) as usize).map(String::as_str)
    }
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

/// Vectors this long when a request does not ask for `dimensions`.
const DEFAULT_EMBEDDING_DIMENSIONS: u64 = 64;

/// `POST /v1/embeddings`: one vector per input after the input's prefill time, as floats or
/// as base64 of little-endian f32s (what the openai SDK asks for by default).
async fn embeddings(State(e): State<Arc<Emulator>>, raw: Bytes) -> Response {
    let facts = match valid_facts(&raw, Endpoint::Embeddings) {
        Ok(facts) => facts,
        Err(refused) => return refused,
    };
    let slot = Slot::taken(&e);
    let tokens = facts.input_tokens();
    tokio::time::sleep(e.prefill(tokens)).await;
    drop(slot);
    let dimensions = facts.dimensions.get().unwrap_or(DEFAULT_EMBEDDING_DIMENSIONS);
    let base64 = facts.encoding_format.as_deref() == Some("base64");
    let data: Vec<Value> = (0..facts.inputs())
        .map(|i| {
            let vector = unit_vector(i, dimensions);
            let embedding = if base64 {
                json!(base64_of(&vector.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data, "model": facts.model.unwrap_or_default(),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    .into_response()
}

/// One Responses API answer in the making: what its objects and events are built from.
struct ResponsePlan {
    id: String,
    item_id: String,
    model: String,
    created: u64,
    prompt_tokens: u64,
    n_tokens: u64,
    /// Cut short by `max_output_tokens`.
    limited: bool,
}

impl ResponsePlan {
    /// The status it ends with.
    fn final_status(&self) -> &'static str {
        if self.limited { "incomplete" } else { "completed" }
    }

    /// The output text.
    fn text(&self) -> String {
        (0..self.n_tokens).map(token).collect()
    }

    /// The text part of its message.
    fn part(&self, text: &str) -> Value {
        json!({"type": "output_text", "text": text, "annotations": []})
    }

    /// Its message, with the parts given.
    fn message(&self, status: &str, content: Value) -> Value {
        json!({"type": "message", "id": self.item_id, "status": status, "role": "assistant", "content": content})
    }

    /// The response object with `status` and `output`; the usage once it has ended.
    fn object(&self, status: &str, output: Value) -> Value {
        let ended = status != "in_progress";
        json!({"id": self.id, "object": "response", "created_at": self.created, "status": status, "model": self.model,
            "error": null,
            "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "instructions": null, "metadata": {}, "parallel_tool_calls": true, "temperature": 1.0, "top_p": 1.0,
            "tool_choice": "auto", "tools": [], "output": output,
            "usage": if ended { json!({"input_tokens": self.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.n_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.prompt_tokens + self.n_tokens}) } else { Value::Null }})
    }

    /// The whole answer, ended.
    fn ended(&self) -> Value {
        let text = self.text();
        self.object(self.final_status(), json!([self.message(self.final_status(), json!([self.part(&text)]))]))
    }
}

/// One server-sent event of a Responses stream, numbered.
fn response_event(kind: &str, sequence: &mut u64, mut fields: Value) -> Bytes {
    fields["type"] = json!(kind);
    fields["sequence_number"] = json!(*sequence);
    *sequence += 1;
    Bytes::from(format!("event: {kind}\ndata: {fields}\n\n"))
}

/// `POST /v1/responses`: see the module's model.
async fn responses(State(e): State<Arc<Emulator>>, raw: Bytes) -> Response {
    let facts = match valid_facts(&raw, Endpoint::Responses) {
        Ok(facts) => facts,
        Err(refused) => return refused,
    };
    let slot = Slot::taken(&e);
    let n = e.next_id.fetch_add(1, Ordering::SeqCst);
    let (n_tokens, limited) = match facts.max_output_tokens() {
        Some(m) => (m, true),
        None => (u64::from(e.config.default_output_tokens), false),
    };
    let plan = ResponsePlan {
        id: format!("resp_emu{n}"),
        item_id: format!("msg_emu{n}"),
        model: facts.model.clone().unwrap_or_default(),
        created: now_s(),
        prompt_tokens: facts.prompt_tokens(),
        n_tokens,
        limited,
    };
    if !facts.streamed() {
        tokio::time::sleep(e.prefill(plan.prompt_tokens)).await;
        for _ in 0..plan.n_tokens {
            tokio::time::sleep(e.itl()).await;
        }
        drop(slot);
        return axum::Json(plan.ended()).into_response();
    }
    let events = futures_util::stream::unfold((0u64, 0u64, slot, plan, false), |(step, mut sequence, slot, plan, done)| async move {
        if done {
            return None;
        }
        let e = slot.0.clone();
        let mut out = Vec::new();
        if step == 0 {
            tokio::time::sleep(e.prefill(plan.prompt_tokens)).await;
            let started = plan.object("in_progress", json!([]));
            out.push(response_event("response.created", &mut sequence, json!({"response": started})));
            out.push(response_event("response.in_progress", &mut sequence, json!({"response": started})));
            out.push(response_event("response.output_item.added", &mut sequence, json!({"output_index": 0, "item": plan.message("in_progress", json!([]))})));
            out.push(response_event("response.content_part.added", &mut sequence,
                json!({"item_id": plan.item_id, "output_index": 0, "content_index": 0, "part": plan.part("")})));
        }
        if step < plan.n_tokens {
            tokio::time::sleep(e.itl()).await;
            out.push(response_event("response.output_text.delta", &mut sequence,
                json!({"item_id": plan.item_id, "output_index": 0, "content_index": 0, "delta": token(step), "logprobs": []})));
            return Some((Ok::<Bytes, std::io::Error>(Bytes::from(out.concat())), (step + 1, sequence, slot, plan, false)));
        }
        let text = plan.text();
        let status = plan.final_status();
        out.push(response_event("response.output_text.done", &mut sequence,
            json!({"item_id": plan.item_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []})));
        out.push(response_event("response.content_part.done", &mut sequence,
            json!({"item_id": plan.item_id, "output_index": 0, "content_index": 0, "part": plan.part(&text)})));
        out.push(response_event("response.output_item.done", &mut sequence, json!({"output_index": 0, "item": plan.message(status, json!([plan.part(&text)]))})));
        out.push(response_event(&format!("response.{status}"), &mut sequence, json!({"response": plan.ended()})));
        Some((Ok(Bytes::from(out.concat())), (step + 1, sequence, slot, plan, true)))
    });
    event_stream(Body::from_stream(events))
}

/// A vector of length one that differs from input to input.
fn unit_vector(input: u64, dimensions: u64) -> Vec<f32> {
    let raw: Vec<f32> = (0..dimensions).map(|j| ((input * 31 + j * 17) % 101) as f32 - 50.0).collect();
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
    raw.into_iter().map(|x| x / norm).collect()
}

/// Standard base64 with padding.
fn base64_of(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [group[0], *group.get(1).unwrap_or(&0), *group.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= group.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * k)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn respond(e: Arc<Emulator>, raw: Bytes, chat: bool) -> Response {
    let p = match plan(&e, &raw, chat) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let slot = Slot::taken(&e);
    let created = now_s();
    let usage = json!({"prompt_tokens": p.prompt_tokens, "completion_tokens": p.n_tokens * p.n, "total_tokens": p.prompt_tokens + p.n_tokens * p.n});
    if !p.stream {
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
                    let prefix = p.echoed(i).unwrap_or_default();
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
                    out.extend(choices.into_iter().map(|c| chunk(json!([c]), Value::Null)));
                } else if p.echo.is_some() {
                    let choices: Vec<Value> = (0..p.n).map(|i| json!({"index": i, "text": p.echoed(i), "logprobs": null, "finish_reason": null})).collect();
                    out.extend(choices.into_iter().map(|c| chunk(json!([c]), Value::Null)));
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
                out.extend(choices.into_iter().map(|c| chunk(json!([c]), Value::Null)));
                let bytes: Vec<u8> = out.concat();
                return Some((Ok::<Bytes, std::io::Error>(Bytes::from(bytes)), (step + 1, slot, p, false)));
            }
            let choices: Vec<Value> = (0..p.n)
                .map(|i| if chat { json!({"index": i, "delta": {}, "logprobs": null, "finish_reason": p.finish}) } else { json!({"index": i, "text": "", "logprobs": null, "finish_reason": p.finish}) })
                .collect();
            out.extend(choices.into_iter().map(|c| chunk(json!([c]), Value::Null)));
            if p.include_usage {
                let usage = json!({"prompt_tokens": p.prompt_tokens, "completion_tokens": p.n_tokens * p.n, "total_tokens": p.prompt_tokens + p.n_tokens * p.n});
                out.push(chunk(json!([]), usage));
            }
            out.push(Bytes::from_static(b"data: [DONE]\n\n"));
            let bytes: Vec<u8> = out.concat();
            Some((Ok(Bytes::from(bytes)), (step + 1, slot, p, true)))
        }
    });
    event_stream(Body::from_stream(events))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_the_standard_alphabet_with_padding() {
        for (bytes, text) in [(&b""[..], ""), (b"f", "Zg=="), (b"fo", "Zm8="), (b"foo", "Zm9v"), (b"foobar", "Zm9vYmFy"), (&[0xff, 0xfe, 0x00][..], "//4A")] {
            assert_eq!(base64_of(bytes), text);
        }
    }

    #[test]
    fn each_input_gets_its_own_unit_vector() {
        let (a, b) = (unit_vector(0, 8), unit_vector(1, 8));
        assert_eq!(a.len(), 8);
        assert!((a.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
        assert_ne!(a, b);
    }
}
