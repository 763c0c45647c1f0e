//! The fleet API from the other side: one HTTP client for operators (`edgebuild rollout`,
//! `edgebuild fleet enroll`) and for devices (`edgebuild device simulate`). A connection failure
//! is [`FleetError::Unreachable`]; an answer other than 2xx is [`FleetError::Refused`] with the
//! server's message. Tokens go in a header and are never printed.

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::FleetError;

#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(base: &str, token: &str) -> Result<Client, FleetError> {
        let url = url::Url::parse(base).map_err(|e| {
            FleetError::Usage(
                format!("`{base}` is not a server URL: {e}"),
                Some("say http://HOST:PORT".into()),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FleetError::Usage(
                format!("`{base}`: the fleet server speaks http or https"),
                None,
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build()
            .map_err(|e| FleetError::Usage(format!("HTTP client: {e}"), None))?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
        })
    }

    /// The same server with another token (a device's).
    pub fn with_token(&self, token: &str) -> Client {
        Client {
            token: token.to_string(),
            ..self.clone()
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request; `None` for 204 No Content.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, FleetError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request.send().await.map_err(|e| FleetError::Unreachable {
            url: self.base.clone(),
            message: without_url(&e),
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| FleetError::Unreachable {
                url: self.base.clone(),
                message: without_url(&e),
            })?;
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
            let help = match status.as_u16() {
                401 => Some(format!(
                    "pass the admin token in {} (operators) or a device token from enrollment",
                    super::TOKEN_ENV
                )),
                _ => None,
            };
            return Err(FleetError::Refused {
                status: status.as_u16(),
                message,
                help,
            });
        }
        Ok(Some(bytes.to_vec()))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, FleetError> {
        let bytes = self.send(Method::GET, path, None).await?;
        bytes.map(|b| self.decode(&b)).transpose()
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, FleetError> {
        let body = serde_json::to_vec(body).expect("requests serialize");
        let bytes = self.send(Method::POST, path, Some(body)).await?;
        self.decode(&bytes.unwrap_or_default())
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, FleetError> {
        serde_json::from_slice(bytes).map_err(|e| FleetError::Refused {
            status: 200,
            message: format!("unexpected answer from {}: {e}", self.base),
            help: None,
        })
    }

    /// Uploads an artifact unless the server has it (`HEAD` first).
    pub async fn upload_artifact(&self, sha256: &str, bytes: Vec<u8>) -> Result<bool, FleetError> {
        let path = format!("/v1/artifacts/{sha256}");
        match self.send(Method::HEAD, &path, None).await {
            Ok(_) => return Ok(false),
            Err(FleetError::Refused { status: 404, .. }) => {}
            Err(e) => return Err(e),
        }
        let url = format!("{}/v1/admin/artifacts/{sha256}", self.base);
        let response = self
            .http
            .put(url)
            .bearer_auth(&self.token)
            .body(bytes)
            .send()
            .await
            .map_err(|e| FleetError::Unreachable {
                url: self.base.clone(),
                message: without_url(&e),
            })?;
        if !response.status().is_success() {
            return Err(FleetError::Refused {
                status: response.status().as_u16(),
                message: format!("artifact {sha256} was not accepted"),
                help: None,
            });
        }
        Ok(true)
    }
}

/// reqwest's message and its causes, without the URL (it may carry credentials or tokens).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text
            .replace(&format!(" ({url})"), "")
            .replace(url.as_str(), "URL");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}
