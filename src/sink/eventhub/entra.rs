//! Entra ID (Azure AD) service principal tokens for Event Hubs: the OAuth 2.0 client-credentials
//! grant, by hand (one POST), put on `$cbs` as type `jwt`.
//!
//! `POST {authority}/{tenant}/oauth2/v2.0/token` with `grant_type=client_credentials`,
//! `client_id`, `client_secret`, `scope=https://eventhubs.azure.net/.default`; the answer's
//! `access_token` and `expires_in` (seconds). The authority is configurable for sovereign clouds
//! (`https://login.microsoftonline.us`, `https://login.chinacloudapi.cn`) and for tests.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Azure's public cloud authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// The scope Event Hubs tokens are issued for.
pub const EVENT_HUBS_SCOPE: &str = "https://eventhubs.azure.net/.default";

/// A service principal.
#[derive(Clone)]
pub struct EntraClient {
    pub authority: String,
    pub tenant_id: String,
    pub client_id: String,
    client_secret: String,
    http: reqwest::Client,
    /// The last token, reused until 80 % of its life (Entra throttles clients that ask for a
    /// token per request); shared by clones.
    cached: Arc<Mutex<Option<Cached>>>,
}

struct Cached {
    token: String,
    /// When it was obtained, and how long it lives.
    at: Instant,
    lifetime: Duration,
}

impl std::fmt::Debug for EntraClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraClient")
            .field("authority", &self.authority)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EntraError {
    #[error("cannot reach the Entra ID token endpoint {url}: {source}")]
    Request { url: String, source: reqwest::Error },
    #[error("Entra ID refused client {client_id} in tenant {tenant_id}: HTTP {status} {error}: {description}")]
    Refused {
        tenant_id: String,
        client_id: String,
        status: u16,
        error: String,
        description: String,
    },
    #[error("Entra ID answered with something that is not a token: {0}")]
    Malformed(String),
    #[error("HTTP client setup: {0}")]
    Client(reqwest::Error),
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize, Default)]
struct ErrorResponse {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl EntraClient {
    pub fn new(
        authority: Option<&str>,
        tenant_id: &str,
        client_id: &str,
        client_secret: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, EntraError> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(EntraError::Client)?;
        Ok(EntraClient {
            authority: authority
                .unwrap_or(DEFAULT_AUTHORITY)
                .trim_end_matches('/')
                .to_string(),
            tenant_id: tenant_id.to_string(),
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            http,
            cached: Arc::default(),
        })
    }

    /// An access token and what is left of its life: the cached one until 80 % of its life
    /// has passed, else a fresh one.
    pub async fn token(&self) -> Result<(String, Duration), EntraError> {
        if let Some(reused) = self.cached_token() {
            return Ok(reused);
        }
        let (token, lifetime) = self.fetch().await?;
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some(Cached {
                token: token.clone(),
                at: Instant::now(),
                lifetime,
            });
        }
        Ok((token, lifetime))
    }

    /// Forgets the cached token (the hub refused it): the next [`token`](Self::token) asks
    /// Entra ID again.
    pub fn forget_token(&self) {
        if let Ok(mut cached) = self.cached.lock() {
            *cached = None;
        }
    }

    fn cached_token(&self) -> Option<(String, Duration)> {
        let cached = self.cached.lock().ok()?;
        let c = cached.as_ref()?;
        let age = c.at.elapsed();
        (age < c.lifetime.mul_f64(0.8)).then(|| (c.token.clone(), c.lifetime - age))
    }

    /// A fresh access token and its lifetime, from the token endpoint.
    async fn fetch(&self) -> Result<(String, Duration), EntraError> {
        let url = format!("{}/{}/oauth2/v2.0/token", self.authority, self.tenant_id);
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.as_str()),
            ("scope", EVENT_HUBS_SCOPE),
        ];
        let response = self
            .http
            .post(&url)
            .form(&form)
            .send()
            .await
            .map_err(|source| EntraError::Request {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|source| EntraError::Request { url, source })?;
        if !status.is_success() {
            let e: ErrorResponse = serde_json::from_slice(&body).unwrap_or_default();
            return Err(EntraError::Refused {
                tenant_id: self.tenant_id.clone(),
                client_id: self.client_id.clone(),
                status: status.as_u16(),
                error: e.error,
                description: e
                    .error_description
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            });
        }
        let t: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| EntraError::Malformed(e.to_string()))?;
        Ok((t.access_token, Duration::from_secs(t.expires_in)))
    }
}
