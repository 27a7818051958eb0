//! Paths to handlers. Handlers only parse, check the token and call [`Shared`]'s `on_*`.

use crate::error::{Error, Result};
use crate::state::{Principal, Shared};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use futures_util::StreamExt;
use std::sync::Arc;
use tidepool_api::{
    CancelRequest, PollRequest, RegisterRequest, ReportRequest, ReportResponse, SubmitRequest,
    SubmitResponse,
};

type AppState = Arc<Shared>;

/// The whole REST API.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v1/jobs", get(list_jobs).post(submit))
        .route("/api/v1/jobs/test", post(trial_submit))
        .route("/api/v1/jobs/{id}", get(show_job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/jobs/{id}/tasks/{index}/log", get(task_log))
        .route("/api/v1/jobs/{id}/steps", get(steps_for_node).post(post_step))
        .route("/api/v1/jobs/{id}/steps/{step}", get(step_progress).post(step_report))
        .route("/api/v1/nodes", get(list_nodes))
        .route("/api/v1/nodes/{name}/drain", post(drain_node))
        .route("/api/v1/nodes/{name}/resume", post(resume_node))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/projects", get(list_projects).post(create_project))
        .route("/api/v1/tokens", post(create_token).get(list_tokens))
        .route("/api/v1/tokens/{id}/revoke", post(revoke_token))
        .route("/api/v1/registries", get(list_registry_logins).post(registry_login))
        .route("/api/v1/registries/logout", post(registry_logout))
        .route("/api/v1/agent/register", post(agent_register))
        .route("/api/v1/agent/poll", post(agent_poll))
        .route("/api/v1/agent/report", post(agent_report))
        .route("/api/v1/agent/log", post(agent_log))
        .route("/api/v1/agent/leave", post(agent_leave))
        .route("/api/v1/agent/gpus", post(agent_gpus))
        .route("/api/v1/agent/images", post(agent_images))
        .fallback(not_found)
        .with_state(shared)
}

async fn not_found() -> Error {
    Error::NotFound("no such endpoint".into())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Who the request's token stands for; 401 when none.
fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<Principal> {
    bearer(headers).and_then(|t| shared.principal(t)).ok_or(Error::Unauthorized)
}

/// Admin-only routes look absent to project tokens.
fn require_admin(shared: &Shared, headers: &HeaderMap) -> Result<()> {
    match authorize(shared, headers)? {
        Principal::Admin => Ok(()),
        Principal::Project(_) => Err(Error::NotFound("no such endpoint".into())),
    }
}

/// A job the principal may see; other projects' jobs do not exist for it.
fn visible_job(shared: &Shared, who: &Principal, job_id: u64) -> Result<()> {
    match (who, shared.job_project(job_id)) {
        (_, None) => Err(Error::NotFound(format!("job {job_id} does not exist"))),
        (Principal::Admin, Some(_)) => Ok(()),
        (Principal::Project(p), Some(owner)) if *p == owner => Ok(()),
        _ => Err(Error::NotFound(format!("job {job_id} does not exist"))),
    }
}

fn require_agent(shared: &Shared, headers: &HeaderMap) -> Result<()> {
    match bearer(headers) {
        Some(t) if shared.is_join_token(t) => Ok(()),
        _ => Err(Error::Unauthorized),
    }
}

/// Parses a JSON body, naming the offending field when serde can tell.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        let text = e.to_string();
        let field = text
            .split('`')
            .nth(1)
            .filter(|_| text.starts_with("unknown field") || text.starts_with("missing field"))
            .map(str::to_string);
        Error::BadRequest { field, message: format!("invalid JSON body: {text}") }
    })
}

fn parse_id(text: &str, what: &str) -> Result<u64> {
    text.parse::<u64>()
        .map_err(|_| Error::NotFound(format!("{what} '{text}' does not exist")))
}

/// A job's steps open only to its step key (held by its tasks) and the admin; to anyone else
/// the job does not exist.
fn open_steps(shared: &Shared, headers: &HeaderMap, id: &str) -> Result<u64> {
    let job_id = parse_id(id, "job")?;
    let presented = bearer(headers).ok_or(Error::Unauthorized)?;
    if shared.opens_steps(job_id, presented) {
        Ok(job_id)
    } else {
        Err(Error::NotFound(format!("job {job_id} does not exist")))
    }
}

fn query_number<T: std::str::FromStr>(q: &HashMap<String, String>, name: &str) -> Result<Option<T>> {
    q.get(name).map(|v| v.parse::<T>().map_err(|_| Error::field(name, "must be a whole number"))).transpose()
}

async fn post_step(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>, body: Bytes) -> Result<Json<tidepool_api::StepPosted>> {
    let job_id = open_steps(&s, &headers, &id)?;
    Ok(Json(s.on_step_post(job_id, parse(&body)?)?))
}

async fn steps_for_node(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>, Query(q): Query<HashMap<String, String>>) -> Result<Json<tidepool_api::StepsForNode>> {
    let job_id = open_steps(&s, &headers, &id)?;
    let node = query_number::<u32>(&q, "node")?.ok_or_else(|| Error::field("node", "is required"))?;
    Ok(Json(s.on_steps_for_node(job_id, node, query_number(&q, "after")?).await?))
}

async fn step_report(State(s): State<AppState>, headers: HeaderMap, Path((id, step)): Path<(String, String)>, body: Bytes) -> Result<StatusCode> {
    let job_id = open_steps(&s, &headers, &id)?;
    let step = step.parse::<u32>().map_err(|_| Error::NotFound(format!("step '{step}' does not exist")))?;
    s.on_step_report(job_id, step, parse(&body)?)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn step_progress(State(s): State<AppState>, headers: HeaderMap, Path((id, step)): Path<(String, String)>, Query(q): Query<HashMap<String, String>>) -> Result<Json<tidepool_api::StepProgress>> {
    let job_id = open_steps(&s, &headers, &id)?;
    let step = step.parse::<u32>().map_err(|_| Error::NotFound(format!("step '{step}' does not exist")))?;
    let (after, wait_ms) = (query_number(&q, "after")?.unwrap_or(0), query_number(&q, "wait_ms")?.unwrap_or(5000));
    Ok(Json(s.on_step_progress(job_id, step, after, wait_ms).await?))
}

/// A submission's body, the project set to the token's own (another project's is refused).
fn submission(who: &Principal, body: &[u8]) -> Result<SubmitRequest> {
    let mut req: SubmitRequest = parse(body)?;
    if let Principal::Project(p) = who {
        match &req.project {
            Some(asked) if asked != p => {
                return Err(Error::field("project", format!("this token acts for project {p}, not {asked}")))
            }
            _ => req.project = Some(p.clone()),
        }
    }
    Ok(req)
}

async fn submit(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Json<SubmitResponse>> {
    let who = authorize(&s, &headers)?;
    let job_id = s.on_submit(submission(&who, &body)?).await?;
    Ok(Json(SubmitResponse { job_id }))
}

async fn trial_submit(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Json<tidepool_api::TrialAnswer>> {
    let who = authorize(&s, &headers)?;
    Ok(Json(s.on_trial(&submission(&who, &body)?)?))
}

async fn list_jobs(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let who = authorize(&s, &headers)?;
    let active = q.get("active").is_some_and(|v| v == "true" || v == "1");
    let project = match &who {
        Principal::Admin => None,
        Principal::Project(p) => Some(p.as_str()),
    };
    if q.get("history").is_some_and(|v| v == "true" || v == "1") {
        // Jobs that left memory, from the journal, a page at a time by id.
        let number = |name: &str, default: u64| -> Result<u64> {
            q.get(name).map_or(Ok(default), |v| v.parse::<u64>().map_err(|_| Error::field(name, "must be a whole number")))
        };
        let (after, since_ms, limit) = (number("after", 0)?, number("since_ms", 0)?, number("limit", 500)?);
        let shared = s.clone();
        let project = project.map(str::to_string);
        let (views, next) = tokio::task::spawn_blocking(move || shared.history_views(project.as_deref(), after, since_ms, limit as usize))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        let next = next.map_or(String::new(), |n| n.to_string());
        return Ok(([(header::HeaderName::from_static("x-next-after"), next)], Json(views)).into_response());
    }
    let (views, hidden) = s.job_views(active, project);
    Ok(([(header::HeaderName::from_static("x-finished-not-shown"), hidden.to_string())], Json(views)).into_response())
}

async fn show_job(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let who = authorize(&s, &headers)?;
    let (id, _) = s.job_holding_id(parse_id(&id, "job")?);
    visible_job(&s, &who, id)?;
    let with_tasks = q.get("tasks").is_some_and(|v| v == "true" || v == "1");
    let shared = s.clone();
    let view = tokio::task::spawn_blocking(move || shared.job_view(id, with_tasks))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    Ok(Json(view).into_response())
}

async fn cancel(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let who = authorize(&s, &headers)?;
    // An array task's own job id (Slurm's `scancel 37` for task 2 of array 35) cancels that task.
    let (id, task) = s.job_holding_id(parse_id(&id, "job")?);
    visible_job(&s, &who, id)?;
    let req: CancelRequest = if body.is_empty() { CancelRequest::default() } else { parse(&body)? };
    let index = match (task, req.index) {
        (Some(own), Some(asked)) if own != asked => return Err(Error::field("index", format!("that id is task {own} of job {id}"))),
        (task, asked) => asked.or(task),
    };
    let scope = tidepool_api::SignalScope::parse(req.scope.as_deref()).map_err(|e| Error::field("scope", e))?;
    if let Some(name) = &req.signal {
        let signal = tidepool_api::signal_number(name).ok_or_else(|| Error::field("signal", format!("'{name}' is not a signal name or number")))?;
        return Ok(Json(s.on_signal(id, index, signal, scope)?).into_response());
    }
    if req.scope.is_some() {
        return Err(Error::field("scope", "is for a signal"));
    }
    Ok(Json(s.on_cancel(id, index).await?).into_response())
}

async fn task_log(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((id, index)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let who = authorize(&s, &headers)?;
    let job_id = parse_id(&id, "job")?;
    visible_job(&s, &who, job_id)?;
    let index = u32::try_from(parse_id(&index, "task")?).map_err(|_| Error::field("task", "is not an array index"))?;
    let stderr = match q.get("stream").map(String::as_str) {
        None | Some("stdout") => false,
        Some("stderr") => true,
        Some(_) => return Err(Error::field("stream", "must be stdout or stderr")),
    };
    let number = |name: &str| -> Result<Option<u64>> {
        q.get(name).map(|v| v.parse::<u64>().map_err(|_| Error::field(name, "must be a whole number of bytes or lines"))).transpose()
    };
    let wanted = crate::logs::Wanted {
        job_id,
        index,
        stderr,
        offset: number("offset")?.unwrap_or(0),
        limit: number("limit")?.unwrap_or(u64::MAX),
        tail_lines: number("tail")?,
    };
    let shared = s.clone();
    let (node, ended) = tokio::task::spawn_blocking(move || shared.log_node(job_id, index))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    let (first, rest) = crate::logs::stream(s.clone(), node, wanted).await?;
    let (start, size) = (first.start, first.size);
    let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(first.bytes) }).chain(rest);
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_string()),
            (header::HeaderName::from_static("x-log-start"), start.to_string()),
            (header::HeaderName::from_static("x-log-size"), size.to_string()),
            (header::HeaderName::from_static("x-task-ended"), ended.to_string()),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

async fn list_nodes(State(s): State<AppState>, headers: HeaderMap) -> Result<Response> {
    let mut views = s.node_views();
    // Which images a node holds says what other projects run: the admin's to see.
    if matches!(authorize(&s, &headers)?, Principal::Project(_)) {
        for view in &mut views {
            view.images.clear();
        }
    }
    Ok(Json(views).into_response())
}

async fn drain_node(State(s): State<AppState>, headers: HeaderMap, Path(name): Path<String>) -> Result<Response> {
    require_admin(&s, &headers)?;
    s.on_drain(&name, true).await?;
    Ok(Json(serde_json::json!({"node": name, "draining": true})).into_response())
}

async fn resume_node(State(s): State<AppState>, headers: HeaderMap, Path(name): Path<String>, body: Bytes) -> Result<Response> {
    require_admin(&s, &headers)?;
    let req: tidepool_api::ResumeRequest = if body.is_empty() { tidepool_api::ResumeRequest::default() } else { parse(&body)? };
    if let Some(gpu) = req.gpu {
        s.on_resume_gpu(&name, gpu)?;
        return Ok(Json(serde_json::json!({"node": name, "gpu": gpu, "failed": false})).into_response());
    }
    s.on_drain(&name, false).await?;
    Ok(Json(serde_json::json!({"node": name, "draining": false})).into_response())
}

async fn create_project(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response> {
    require_admin(&s, &headers)?;
    let req: tidepool_api::ProjectRequest = parse(&body)?;
    s.on_create_project(&req)?;
    Ok(Json(serde_json::json!({"name": req.name})).into_response())
}

async fn list_projects(State(s): State<AppState>, headers: HeaderMap) -> Result<Response> {
    require_admin(&s, &headers)?;
    Ok(Json(s.project_views()?).into_response())
}

async fn create_token(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response> {
    require_admin(&s, &headers)?;
    let req: tidepool_api::TokenRequest = parse(&body)?;
    Ok(Json(s.on_create_token(&req)?).into_response())
}

async fn list_tokens(State(s): State<AppState>, headers: HeaderMap) -> Result<Response> {
    require_admin(&s, &headers)?;
    Ok(Json(s.token_views()).into_response())
}

async fn revoke_token(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response> {
    require_admin(&s, &headers)?;
    s.on_revoke_token(&id)?;
    Ok(Json(serde_json::json!({"id": id, "revoked": true})).into_response())
}

async fn registry_login(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response> {
    let who = authorize(&s, &headers)?;
    let req: tidepool_api::RegistryLoginRequest = parse(&body)?;
    Ok(Json(s.on_registry_login(&who, req)?).into_response())
}

async fn registry_logout(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response> {
    let who = authorize(&s, &headers)?;
    let req: tidepool_api::RegistryLogoutRequest = parse(&body)?;
    s.on_registry_logout(&who, &req)?;
    Ok(Json(serde_json::json!({"host": req.host, "project": req.project})).into_response())
}

async fn list_registry_logins(State(s): State<AppState>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Result<Response> {
    let who = authorize(&s, &headers)?;
    Ok(Json(s.registry_login_views(&who, q.get("project").map(String::as_str))?).into_response())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], tidepool_api::openapi::document()).into_response()
}

async fn agent_register(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response> {
    require_agent(&s, &headers)?;
    let req: RegisterRequest = parse(&body)?;
    Ok(Json(s.on_register(req).await?).into_response())
}

async fn agent_poll(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response> {
    require_agent(&s, &headers)?;
    let req: PollRequest = parse(&body)?;
    Ok(Json(s.on_poll(req.session).await?).into_response())
}

async fn agent_report(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response> {
    require_agent(&s, &headers)?;
    let req: ReportRequest = parse(&body)?;
    if !s.session_is_current(req.session) {
        return Ok(Json(ReportResponse { acked: vec![], reregister: true }).into_response());
    }
    let acked = s.on_results(&req.results).await?;
    Ok(Json(ReportResponse { acked, reregister: false }).into_response())
}

async fn agent_gpus(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response> {
    require_agent(&s, &headers)?;
    let req: tidepool_api::GpuHealthReport = parse(&body)?;
    let current = s.on_gpu_health(&req)?;
    Ok(Json(serde_json::json!({"reregister": !current})).into_response())
}

async fn agent_images(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response> {
    require_agent(&s, &headers)?;
    let req: tidepool_api::ImagesReport = parse(&body)?;
    let current = s.on_images(req)?;
    Ok(Json(serde_json::json!({"reregister": !current})).into_response())
}

async fn agent_log(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<tidepool_api::LogAnswerQuery>,
    body: Bytes,
) -> Result<Response> {
    require_agent(&s, &headers)?;
    if !s.log_relay.deliver(&q, body) {
        return Err(Error::NotFound(format!("no log read {} awaits an answer from this session", q.request)));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn agent_leave(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response> {
    require_agent(&s, &headers)?;
    let req: PollRequest = parse(&body)?;
    let current = s.on_leave(req.session);
    Ok(Json(serde_json::json!({"left": current})).into_response())
}
