//! The gateway's routes and their handlers: each reads what it needs and hands the request on.

use super::*;

/// Puts `x-request-id` on every answer of the router's routes.
pub(super) async fn with_request_id(State(g): State<Arc<Gateway>>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let given = request.headers().get(REQUEST_ID_HEADER).cloned();
    let mut response = next.run(request).await;
    response.headers_mut().insert(REQUEST_ID_HEADER, g.request_id(given.as_ref()));
    response
}

/// A request's headers that matter and whole body, taken apart without copying the headers
/// (axum's `HeaderMap` extractor clones them, which showed in profiles at 10,000 requests/s).
pub(super) async fn headers_and_body(g: &Gateway, request: axum::extract::Request) -> Result<(CompletionHeaders, Bytes), Response> {
    let (mut parts, body) = request.into_parts();
    let headers = CompletionHeaders { authorization: parts.headers.remove(header::AUTHORIZATION), tier: parts.headers.remove(TIER_HEADER) };
    match axum::body::to_bytes(body, g.config.max_request_bytes).await {
        Ok(bytes) => Ok((headers, bytes)),
        Err(e) if e.to_string().contains("length limit") => Err(Error::TooLarge { max_bytes: g.config.max_request_bytes }.into_response()),
        Err(e) => Err(Error::invalid(format!("cannot read the request body: {e}"), "body").into_response()),
    }
}

pub(super) async fn chat_completions(State(g): State<Arc<Gateway>>, request: axum::extract::Request) -> Response {
    match headers_and_body(&g, request).await {
        Ok((headers, body)) => g.handle(headers, body, Endpoint::Chat).await,
        Err(refused) => refused,
    }
}

pub(super) async fn completions(State(g): State<Arc<Gateway>>, request: axum::extract::Request) -> Response {
    match headers_and_body(&g, request).await {
        Ok((headers, body)) => g.handle(headers, body, Endpoint::Completions).await,
        Err(refused) => refused,
    }
}

pub(super) async fn responses(State(g): State<Arc<Gateway>>, request: axum::extract::Request) -> Response {
    match headers_and_body(&g, request).await {
        Ok((headers, body)) => g.handle(headers, body, Endpoint::Responses).await,
        Err(refused) => refused,
    }
}

pub(super) async fn embeddings(State(g): State<Arc<Gateway>>, request: axum::extract::Request) -> Response {
    match headers_and_body(&g, request).await {
        Ok((headers, body)) => g.handle(headers, body, Endpoint::Embeddings).await,
        Err(refused) => refused,
    }
}

pub(super) async fn models(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if g.tenant_of(&headers).is_none() {
        return Error::Unauthorized.into_response();
    }
    let data: Vec<Value> = g.models().iter().map(|m| model_object(m, "tidepool")).collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

pub(super) async fn model(State(g): State<Arc<Gateway>>, headers: HeaderMap, axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    if g.tenant_of(&headers).is_none() {
        return Error::Unauthorized.into_response();
    }
    if g.replicas_for(&name).is_empty() {
        return Error::ModelNotFound(name).into_response();
    }
    axum::Json(model_object(&name, "tidepool")).into_response()
}

pub(super) async fn not_found() -> Response {
    Error::UnknownUrl("Unknown endpoint.".into()).into_response()
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
