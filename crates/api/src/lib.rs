//! Wire types of Tidepool: the REST API under `/api/v1/` and the agent protocol.
//!
//! **API boundary**: these types are what clients and agents see; `core` types are converted
//! by hand at the edge, so the core can change without breaking a client.

pub mod agent;
pub mod dates;
pub mod gateway;
pub mod image;
pub mod jobs;
pub mod openapi;
pub mod steps;

pub use agent::*;
pub use image::{registry_host, ImageRef, RegistryCredentials, RegistryLoginRequest, RegistryLoginView, RegistryLogoutRequest, CONTAINER_FEATURE};
pub use jobs::*;
pub use steps::*;

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

/// Compares a secret someone presented with the one expected, in time independent of where
/// they differ (so a token cannot be guessed byte by byte from response times).
pub fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
