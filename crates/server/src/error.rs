//! The server's one error type, mapped to HTTP in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tidepool_api::ErrorBody;

/// Everything a request or the server can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is wrong; `field` names the part to blame.
    #[error("{message}")]
    BadRequest {
        /// The request field.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// No token, or a wrong one.
    #[error("missing or invalid API token")]
    Unauthorized,
    /// No such thing (or not yours).
    #[error("{0}")]
    NotFound(String),
    /// What is asked lives on a node that cannot answer now.
    #[error("{0}")]
    Unavailable(String),
    /// The request body is over the cap.
    #[error("{0}")]
    TooLarge(String),
    /// The journal refused; nothing was acknowledged.
    #[error("journal: {0}")]
    Journal(String),
    /// A fault of the server itself.
    #[error("{0}")]
    Internal(String),
}

/// This crate's result.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A bad request about `field`.
    pub fn field(field: &str, message: impl Into<String>) -> Error {
        Error::BadRequest { field: Some(field.to_string()), message: message.into() }
    }

    /// The HTTP status of this error.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Error::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Journal(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// How loudly to log it.
    pub fn level(&self) -> tracing::Level {
        match self {
            Error::BadRequest { .. } | Error::Unauthorized | Error::NotFound(_) | Error::Unavailable(_) | Error::TooLarge(_) => {
                tracing::Level::DEBUG
            }
            Error::Journal(_) | Error::Internal(_) => tracing::Level::ERROR,
        }
    }
}

impl From<tidepool_store::Error> for Error {
    fn from(e: tidepool_store::Error) -> Error {
        Error::Journal(e.to_string())
    }
}

impl From<tidepool_core::SpecError> for Error {
    fn from(e: tidepool_core::SpecError) -> Error {
        Error::BadRequest { field: Some(e.field.to_string()), message: e.message }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if self.level() == tracing::Level::ERROR {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, "request refused");
        }
        let field = match &self {
            Error::BadRequest { field, .. } => field.clone(),
            Error::TooLarge(_) => Some("body".to_string()),
            _ => None,
        };
        let body = ErrorBody { error: self.to_string(), field };
        (self.status_code(), axum::Json(body)).into_response()
    }
}
