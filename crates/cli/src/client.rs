//! The HTTP client of the user's commands: finds the server and the token, and turns every
//! failure into one readable line.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;
use tidepool_api::ErrorBody;

/// A connection to the server's REST API.
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    /// How long it waits for the server to send anything.
    timeout: std::time::Duration,
}

/// The default server URL.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7878";

/// How long the CLI waits for the server to send anything before it gives up, unless
/// `TIDEPOOL_TIMEOUT` (seconds) says otherwise.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// The answer timeout: `TIDEPOOL_TIMEOUT` seconds when set, else [`ANSWER_WITHIN`].
fn answer_within() -> Result<std::time::Duration, String> {
    match std::env::var("TIDEPOOL_TIMEOUT") {
        Err(_) => Ok(ANSWER_WITHIN),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if (1..=86_400).contains(&s) => Ok(std::time::Duration::from_secs(s)),
            _ => Err(format!("TIDEPOOL_TIMEOUT: '{v}' is not a number of seconds between 1 and 86400")),
        },
    }
}

impl Client {
    /// From `TIDEPOOL_URL` (https with `TIDEPOOL_CA_CERT` when the server has its own CA) and
    /// `TIDEPOOL_TOKEN`, else `$TIDEPOOL_DATA_DIR/admin.token`, else
    /// `./tidepool-data/admin.token`.
    pub fn from_env() -> Result<Client, String> {
        let base = std::env::var("TIDEPOOL_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
        let token = match std::env::var("TIDEPOOL_TOKEN") {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                let dir = std::env::var("TIDEPOOL_DATA_DIR").unwrap_or_else(|_| "tidepool-data".into());
                let path = PathBuf::from(dir).join("admin.token");
                std::fs::read_to_string(&path)
                    .map(|t| t.trim().to_string())
                    .map_err(|_| {
                        format!(
                            "no API token: set TIDEPOOL_TOKEN, or TIDEPOOL_DATA_DIR to the server's data directory ({} not readable)",
                            path.display()
                        )
                    })?
            }
        };
        let ca = std::env::var_os("TIDEPOOL_CA_CERT").filter(|v| !v.is_empty()).map(PathBuf::from);
        let timeout = answer_within()?;
        let http = tidepool_agent::api_client(ca.as_deref(), timeout)?;
        Ok(Client { base: base.trim_end_matches('/').to_string(), token, http, timeout })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
        let resp = req.bearer_auth(&self.token).send().await.map_err(|e| {
            let mut causes = String::new();
            let mut source: Option<&dyn std::error::Error> = Some(&e);
            while let Some(s) = source {
                causes.push_str(&s.to_string());
                source = s.source();
            }
            if causes.contains("certificate") || causes.contains("UnknownIssuer") {
                format!("the Tidepool server at {} presented a certificate this machine does not trust (set TIDEPOOL_CA_CERT to its CA's PEM file)", self.base)
            } else if e.is_connect() {
                format!("cannot reach the Tidepool server at {} (is `tidepool up` running? set TIDEPOOL_URL)", self.base)
            } else if e.is_timeout() {
                format!("the Tidepool server at {} did not answer within {} s", self.base, self.timeout.as_secs())
            } else {
                format!("request to {} failed: {e}", self.base)
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err("the server refused the API token (check TIDEPOOL_TOKEN)".into());
        }
        let text = resp.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(ErrorBody { error, field: Some(field) }) => format!("{field}: {error}"),
            Ok(ErrorBody { error, field: None }) => error,
            Err(_) => format!("server answered {status}"),
        })
    }

    /// GET a JSON document.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        let resp = self.send(self.http.get(format!("{}/api/v1{path}", self.base))).await?;
        resp.json().await.map_err(|e| format!("unreadable answer: {e}"))
    }

    /// GET, the answer's headers and body left to read as it comes.
    pub async fn get_streamed(&self, path: &str) -> Result<reqwest::Response, String> {
        self.send(self.http.get(format!("{}/api/v1{path}", self.base))).await
    }

    /// POST JSON, read JSON.
    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, String> {
        let resp = self
            .send(self.http.post(format!("{}/api/v1{path}", self.base)).json(body))
            .await?;
        resp.json().await.map_err(|e| format!("unreadable answer: {e}"))
    }
}
