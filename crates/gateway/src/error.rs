//! Every way the gateway (and its emulated replica) says no, as one type: each variant's
//! status, OpenAI error type, code and parameter are chosen here and nowhere else.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// What went wrong with a request, answered as OpenAI's error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// 400: the request is malformed; `param` names the field at fault.
    Invalid { message: String, param: Option<String> },
    /// 401: no key, or one no tenant has.
    Unauthorized,
    /// 404: no replica serves the model.
    ModelNotFound(String),
    /// 404: no such object (a file, a batch); `param` names the id's field.
    NotFound { message: String, param: &'static str },
    /// 404: no such endpoint.
    UnknownUrl(String),
    /// 409: the object is not in a state that allows it.
    Conflict(String),
    /// 413: the body is over the gateway's cap.
    TooLarge { max_bytes: usize },
    /// 429: a limit was hit; `limit` is OpenAI's error type (`requests` or `tokens`), and no
    /// `retry_after_ms` means waiting never helps (the request alone is over the limit).
    RateLimited { message: String, limit: &'static str, code: &'static str, retry_after_ms: Option<u64> },
    /// 502: the replica failed to answer (the message never names its address).
    Upstream(String),
    /// 503: something the request needs is not there now (the files-and-batches store).
    Unavailable(String),
    /// 500: a fault of the gateway's own.
    Internal(String),
}

impl Error {
    /// A 400 naming the parameter at fault.
    pub fn invalid(message: impl Into<String>, param: &str) -> Error {
        Error::Invalid { message: message.into(), param: Some(param.to_string()) }
    }

    /// Its HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Invalid { .. } => StatusCode::BAD_REQUEST,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::ModelNotFound(_) | Error::NotFound { .. } | Error::UnknownUrl(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Upstream(_) => StatusCode::BAD_GATEWAY,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's error object for it: `{"error": {message, type, param, code}}`.
    pub fn object(&self) -> serde_json::Value {
        let (message, kind, param, code): (String, &str, Option<&str>, Option<&str>) = match self {
            Error::Invalid { message, param } => (message.clone(), "invalid_request_error", param.as_deref(), None),
            Error::Unauthorized => ("Incorrect API key provided.".into(), "invalid_request_error", None, Some("invalid_api_key")),
            Error::ModelNotFound(model) => (format!("The model `{model}` does not exist."), "invalid_request_error", Some("model"), Some("model_not_found")),
            Error::NotFound { message, param } => (message.clone(), "invalid_request_error", Some(param), None),
            Error::UnknownUrl(message) => (message.clone(), "invalid_request_error", None, Some("unknown_url")),
            Error::Conflict(message) => (message.clone(), "invalid_request_error", None, None),
            Error::TooLarge { max_bytes } => (
                format!("The request body is over this gateway's limit of {max_bytes} bytes."),
                "invalid_request_error",
                Some("body"),
                Some("request_too_large"),
            ),
            Error::RateLimited { message, limit, code, .. } => (message.clone(), limit, None, Some(code)),
            Error::Upstream(message) => (message.clone(), "server_error", None, Some("upstream_error")),
            Error::Unavailable(message) | Error::Internal(message) => (message.clone(), "server_error", None, None),
        };
        crate::openai::error_object(&message, kind, param, code)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status().as_u16(), self.object()["error"]["message"].as_str().unwrap_or_default())
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.object())).into_response();
        if let Error::RateLimited { retry_after_ms: Some(ms), .. } = self {
            let secs = ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
            if let Ok(v) = HeaderValue::from_str(&ms.to_string()) {
                response.headers_mut().insert("retry-after-ms", v);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_says_when_to_come_back_and_only_when_waiting_helps() {
        let limited = |retry_after_ms| Error::RateLimited { message: "slow down".into(), limit: "tokens", code: "rate_limit_exceeded", retry_after_ms };
        let soon = limited(Some(1500)).into_response();
        assert_eq!(soon.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(soon.headers()[header::RETRY_AFTER], "2");
        assert_eq!(soon.headers()["retry-after-ms"], "1500");
        let never = limited(None).into_response();
        assert!(never.headers().get(header::RETRY_AFTER).is_none());
        assert_eq!(limited(None).object()["error"]["type"], "tokens");
    }

    #[test]
    fn every_error_is_an_openai_error_object_with_its_status() {
        for (e, status, code) in [
            (Error::invalid("bad", "temperature"), 400, None),
            (Error::Unauthorized, 401, Some("invalid_api_key")),
            (Error::ModelNotFound("m".into()), 404, Some("model_not_found")),
            (Error::TooLarge { max_bytes: 10 }, 413, Some("request_too_large")),
            (Error::Upstream("x".into()), 502, Some("upstream_error")),
            (Error::Unavailable("x".into()), 503, None),
        ] {
            assert_eq!(e.status().as_u16(), status, "{e}");
            let object = e.object();
            assert_eq!(object["error"]["code"].as_str(), code, "{object}");
            assert!(object["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{object}");
        }
        assert_eq!(Error::invalid("bad", "temperature").object()["error"]["param"], "temperature");
    }
}
