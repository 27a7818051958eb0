//! OpenAI's object shapes that the gateway, the batch runner and the emulator all answer with.

use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// OpenAI's error object: `{"error": {message, type, param, code}}`.
pub fn error_object(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}


/// A 200 whose body is a stream of server-sent events, sent as they come.
pub fn event_stream(body: axum::body::Body) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/event-stream"), (axum::http::header::CACHE_CONTROL, "no-cache")], body).into_response()
}




/// The model object of `GET /v1/models` and `GET /v1/models/{model}`.
pub fn model_object(name: &str, owned_by: &str) -> Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": owned_by})
}

