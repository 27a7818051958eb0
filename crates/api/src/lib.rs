//! Wire types of Tidepool: the REST API under `/api/v1/` and the agent protocol.
//!
//! **API boundary**: these types are what clients and agents see; `core` types are converted
//! by hand at the edge, so the core can change without breaking a client.

pub mod agent;
pub mod dates;
pub mod gateway;
pub mod jobs;
pub mod openapi;

pub use agent::*;
pub use jobs::*;

/// Every REST path starts with this.
pub const API_PREFIX: &str = "/api/v1";

/// The JSON body of every 4xx and 5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// The request field to blame, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
