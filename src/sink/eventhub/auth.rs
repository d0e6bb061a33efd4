//! Where the sink's tokens come from: a shared access key (signed here and renewed), a ready
//! shared access signature (used until it expires), or an Entra ID service principal.

use std::time::Duration;

use super::connection_string::SasCredential;
use super::entra::{EntraClient, EntraError};
use super::sas;

/// SAS tokens the gateway signs live this long; it renews them at 80 % of it.
pub const SAS_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// CBS token type of shared access signatures.
pub const SAS_TOKEN_TYPE: &str = "servicebus.windows.net:sastoken";
/// CBS token type of Entra ID access tokens.
pub const JWT_TOKEN_TYPE: &str = "jwt";

/// A token ready for `$cbs`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub value: String,
    pub kind: &'static str,
    /// Unix seconds.
    pub expires_at: i64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Token({}, expires_at: {}, hidden)",
            self.kind, self.expires_at
        )
    }
}

/// How the sink proves it may send.
#[derive(Clone, Debug)]
pub enum Credential {
    Sas(SasCredential),
    Entra(EntraClient),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the shared access signature in the connection string expired at {expired_at} (Unix time); issue a new one")]
    SignatureExpired { expired_at: i64 },
    #[error(transparent)]
    Entra(#[from] EntraError),
}

impl Credential {
    /// A token for `audience`, valid from now; SAS tokens signed here live `lifetime`
    /// (Entra tokens live as long as the token endpoint says).
    pub async fn token(
        &self,
        audience: &str,
        now: i64,
        lifetime: Duration,
    ) -> Result<Token, AuthError> {
        match self {
            Credential::Sas(SasCredential::Key { name, key }) => {
                let t = sas::sign(audience, name, key, now + lifetime.as_secs().max(1) as i64);
                Ok(Token {
                    value: t.token,
                    kind: SAS_TOKEN_TYPE,
                    expires_at: t.expires_at,
                })
            }
            Credential::Sas(SasCredential::Signature { token, expires_at }) => {
                let expires_at = expires_at.unwrap_or(i64::MAX);
                if expires_at <= now {
                    return Err(AuthError::SignatureExpired {
                        expired_at: expires_at,
                    });
                }
                Ok(Token {
                    value: token.clone(),
                    kind: SAS_TOKEN_TYPE,
                    expires_at,
                })
            }
            Credential::Entra(client) => {
                let (value, lifetime) = client.token().await?;
                Ok(Token {
                    value,
                    kind: JWT_TOKEN_TYPE,
                    expires_at: now + lifetime.as_secs() as i64,
                })
            }
        }
    }

    /// The hub refused the last token: do not reuse a cached one.
    pub fn forget_token(&self) {
        if let Credential::Entra(client) = self {
            client.forget_token();
        }
    }

    /// The key name, for error messages ("which key").
    pub fn describe(&self) -> String {
        match self {
            Credential::Sas(SasCredential::Key { name, .. }) => {
                format!("shared access key `{name}`")
            }
            Credential::Sas(SasCredential::Signature { .. }) => {
                "the shared access signature".to_string()
            }
            Credential::Entra(c) => {
                format!("Entra ID client {} of tenant {}", c.client_id, c.tenant_id)
            }
        }
    }
}

/// When to renew a token: at 80 % of its remaining life.
pub fn renew_at(now: i64, expires_at: i64) -> i64 {
    now + (expires_at.saturating_sub(now)) * 4 / 5
}
