//! OpenAI's object shapes that the gateway, the batch runner and the emulator all answer with.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// OpenAI's error object: `{"error": {message, type, param, code}}`.
pub fn error_object(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

/// An error object answered with `status`.
pub fn error(status: StatusCode, message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Response {
    (status, axum::Json(error_object(message, kind, param, code))).into_response()
}

/// A 200 whose body is a stream of server-sent events, sent as they come.
pub fn event_stream(body: axum::body::Body) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/event-stream"), (axum::http::header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// A 400 naming the parameter at fault.
pub fn bad_request(message: &str, param: &str) -> Response {
    error(StatusCode::BAD_REQUEST, message, "invalid_request_error", Some(param), None)
}

/// A 401 for a missing or unknown API key.
pub fn unauthorized() -> Response {
    error(StatusCode::UNAUTHORIZED, "Incorrect API key provided.", "invalid_request_error", None, Some("invalid_api_key"))
}

/// A 404 for a model no replica serves.
pub fn model_not_found(model: &str) -> Response {
    error(StatusCode::NOT_FOUND, &format!("The model `{model}` does not exist."), "invalid_request_error", Some("model"), Some("model_not_found"))
}

/// The model object of `GET /v1/models` and `GET /v1/models/{model}`.
pub fn model_object(name: &str, owned_by: &str) -> Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": owned_by})
}

/// A 413 for a request body over the gateway's cap.
pub fn too_large(max_bytes: usize) -> Response {
    let message = format!("The request body is over this gateway's limit of {max_bytes} bytes.");
    error(StatusCode::PAYLOAD_TOO_LARGE, &message, "invalid_request_error", Some("body"), Some("request_too_large"))
}
