//! The HTTPS fallback: `POST https://<namespace>/<hub>/messages` with a batch of events as
//! `application/vnd.microsoft.servicebus.json`, authorised by a SAS token or an Entra bearer
//! token. Slower than AMQP (one request per batch, no pipelining beyond concurrent requests) but
//! it passes any proxy that passes HTTPS.
//!
//! Each event is a JSON entry built by [`super::event::encode_rest_event`]: the reading as the
//! `Body` string, its message id and partition key in `BrokerProperties`. The service answers
//! 201 when it stored the batch, 401 for credentials, 413 for size, 503 (or 429) when busy.

use std::time::Duration;

use super::auth::{Credential, Token};
use super::event::Batch;
use super::transport::{Delivery, LinkError, Settled, Target};

/// The service's limit for one request body.
pub const MAX_REQUEST_SIZE: usize = 1024 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub struct RestLink {
    http: reqwest::Client,
    url: String,
    authorization: String,
    pub max_message_size: usize,
    pub token_expires_at: i64,
}

impl RestLink {
    pub async fn open(
        target: &Target,
        credential: &Credential,
        now: i64,
    ) -> Result<Self, LinkError> {
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .user_agent(concat!("tagbridge/", env!("CARGO_PKG_VERSION")));
        let scheme = match &target.tls {
            Some(tls) => {
                builder = builder.tls_backend_preconfigured((**tls).clone());
                "https"
            }
            None => "http",
        };
        let http = builder.build().map_err(|e| LinkError::Open {
            host: target.host.clone(),
            reason: e.to_string(),
        })?;
        let token = credential
            .token(&target.audience, now, target.token_lifetime)
            .await?;
        Ok(RestLink {
            http,
            url: format!(
                "{scheme}://{}:{}/{}/messages?timeout=60&api-version=2014-01",
                target.host, target.port, target.hub
            ),
            authorization: authorization(&token),
            max_message_size: MAX_REQUEST_SIZE,
            token_expires_at: token.expires_at,
        })
    }

    pub async fn renew(
        &mut self,
        target: &Target,
        credential: &Credential,
        now: i64,
    ) -> Result<(), LinkError> {
        let token = credential
            .token(&target.audience, now, target.token_lifetime)
            .await?;
        self.authorization = authorization(&token);
        self.token_expires_at = token.expires_at;
        Ok(())
    }

    /// Starts the request now; the delivery resolves with the service's answer.
    pub fn send(&mut self, batch: Batch) -> Delivery {
        let mut body = Vec::with_capacity(batch.events().map(|e| e.len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        for (i, entry) in batch.events().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(entry);
        }
        body.push(b']');
        let request = self
            .http
            .post(&self.url)
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/vnd.microsoft.servicebus.json",
            )
            .body(body);
        // Spawned so the request makes progress while the sink waits on older ones.
        let handle = tokio::spawn(async move {
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        return Settled::Accepted;
                    }
                    let text = response.text().await.unwrap_or_default();
                    let text = text.trim();
                    match status.as_u16() {
                        429 | 503 => Settled::Busy(format!("HTTP {status}: {text}")),
                        401 | 403 => Settled::Unauthorized(format!("HTTP {status}: {text}")),
                        413 => Settled::TooLarge(format!("HTTP {status}: {text}")),
                        _ => Settled::Failed(format!("HTTP {status}: {text}")),
                    }
                }
                Err(error) => Settled::Failed(format!("request failed: {error}")),
            }
        });
        Box::pin(async move {
            handle
                .await
                .unwrap_or_else(|e| Settled::Failed(format!("request task failed: {e}")))
        })
    }
}

fn authorization(token: &Token) -> String {
    if token.kind == super::auth::JWT_TOKEN_TYPE {
        format!("Bearer {}", token.value)
    } else {
        // A SAS token already reads `SharedAccessSignature sr=…`.
        token.value.clone()
    }
}
