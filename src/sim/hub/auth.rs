//! Checking what clients present: shared access signatures against the configured keys, the
//! emulator's own Entra-style JWTs, and whether a token's audience covers an entity.
//!
//! Invariants:
//! - A SAS token is valid when its `skn` names a configured key, its `sig` equals the HMAC the
//!   SDKs compute (`sink::eventhub::sas::sign`, byte-identical to Microsoft's), and `se` is in
//!   the future. Its scope is the path of `sr` (scheme and host ignored: clients reach the
//!   emulator under many names).
//! - A JWT is valid when it is HS256-signed with this hub's secret, `aud` is Event Hubs and
//!   `exp` is in the future. It covers the whole namespace, as an Entra role assignment on the
//!   namespace does.
//! - A scope covers an entity path when it is empty (the namespace) or equal to it or a
//!   `/`-prefix of it, compared case-insensitively (`telemetry` covers
//!   `telemetry/Partitions/2`).

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::sink::eventhub::sas;

/// CBS token type of shared access signatures.
pub const SAS_TOKEN_TYPE: &str = "servicebus.windows.net:sastoken";
/// CBS token type of Entra ID access tokens.
pub const JWT_TOKEN_TYPE: &str = "jwt";
/// The audience of Event Hubs access tokens.
pub const EVENT_HUBS_AUDIENCE: &str = "https://eventhubs.azure.net";

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Lower-case entity path the token covers; empty for the whole namespace.
    pub scope: String,
    /// Unix milliseconds (faults shorten tokens below a second).
    pub expires_at_ms: i64,
}

/// Why a token was refused (the text goes to the client as the status description).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("InvalidSignature: the token is not a shared access signature (expected `SharedAccessSignature sr=..&sig=..&se=..&skn=..`)")]
    Malformed,
    #[error("InvalidSignature: the token has no `{0}` field")]
    Missing(&'static str),
    #[error("Unauthorized: the shared access key `{0}` is not known to this hub")]
    UnknownKey(String),
    #[error("InvalidSignature: the token's signature does not match key `{0}`")]
    BadSignature(String),
    #[error("ExpiredToken: the token expired at {0} (Unix time)")]
    Expired(i64),
    #[error("InvalidAudience: the token for `{token}` does not cover `{wanted}`")]
    Audience { token: String, wanted: String },
    #[error("InvalidToken: {0}")]
    Jwt(String),
    #[error("Unsupported token type `{0}`")]
    UnsupportedType(String),
}

/// Checks a SAS token against `keys` at Unix time `now`.
pub fn check_sas(token: &str, keys: &[(String, String)], now: i64) -> Result<Grant, TokenError> {
    let rest = token
        .trim()
        .strip_prefix("SharedAccessSignature ")
        .ok_or(TokenError::Malformed)?;
    let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
    for pair in rest.split('&') {
        let (k, v) = pair.split_once('=').ok_or(TokenError::Malformed)?;
        let v = unquote_plus(v);
        match k.trim() {
            "sr" => sr = Some(v),
            "sig" => sig = Some(v),
            "se" => se = Some(v),
            "skn" => skn = Some(v),
            _ => {}
        }
    }
    let sr = sr.ok_or(TokenError::Missing("sr"))?;
    let sig = sig.ok_or(TokenError::Missing("sig"))?;
    let se = se.ok_or(TokenError::Missing("se"))?;
    let skn = skn.ok_or(TokenError::Missing("skn"))?;
    let expires_at: i64 = se.trim().parse().map_err(|_| TokenError::Malformed)?;
    let (_, key) = keys
        .iter()
        .find(|(name, _)| *name == skn)
        .ok_or_else(|| TokenError::UnknownKey(skn.clone()))?;
    let expected = sas::sign(&sr, &skn, key, expires_at);
    let expected_sig = expected
        .token
        .split('&')
        .find_map(|p| p.strip_prefix("sig="))
        .map(unquote_plus)
        .unwrap_or_default();
    if !constant_time_eq(expected_sig.as_bytes(), sig.as_bytes()) {
        return Err(TokenError::BadSignature(skn));
    }
    if expires_at <= now {
        return Err(TokenError::Expired(expires_at));
    }
    Ok(Grant {
        scope: entity_path(&sr),
        expires_at_ms: expires_at.saturating_mul(1000),
    })
}

/// Issues an HS256 JWT for `client_id` in `tenant`, valid for `lifetime_s` from `now`.
pub fn issue_jwt(
    secret: &[u8],
    issuer: &str,
    tenant: &str,
    client_id: &str,
    now: i64,
    lifetime_s: i64,
) -> String {
    let header = serde_json::json!({"alg": "HS256", "typ": "JWT"});
    let claims = serde_json::json!({
        "aud": EVENT_HUBS_AUDIENCE,
        "iss": issuer,
        "tid": tenant,
        "appid": client_id,
        "sub": client_id,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime_s,
        "roles": ["Azure Event Hubs Data Sender"],
    });
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let sig = hmac(secret, signing_input.as_bytes());
    format!("{signing_input}.{}", b64.encode(sig))
}

/// Checks a JWT issued by [`issue_jwt`] with `secret`.
pub fn check_jwt(token: &str, secret: &[u8], now: i64) -> Result<Grant, TokenError> {
    let token = token.trim();
    let token = token.strip_prefix("Bearer ").unwrap_or(token);
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Jwt("not a JSON web token".into()));
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let sig = b64
        .decode(sig)
        .map_err(|_| TokenError::Jwt("bad signature encoding".into()))?;
    let expected = hmac(secret, format!("{header}.{claims}").as_bytes());
    if !constant_time_eq(&expected, &sig) {
        return Err(TokenError::Jwt(
            "signature not made by this hub's token endpoint".into(),
        ));
    }
    let claims: serde_json::Value = b64
        .decode(claims)
        .ok()
        .and_then(|c| serde_json::from_slice(&c).ok())
        .ok_or_else(|| TokenError::Jwt("claims are not JSON".into()))?;
    if claims["aud"].as_str() != Some(EVENT_HUBS_AUDIENCE) {
        return Err(TokenError::Jwt(format!(
            "audience must be {EVENT_HUBS_AUDIENCE}"
        )));
    }
    let exp = claims["exp"]
        .as_i64()
        .ok_or_else(|| TokenError::Jwt("no exp claim".into()))?;
    if exp <= now {
        return Err(TokenError::Expired(exp));
    }
    Ok(Grant {
        scope: String::new(),
        expires_at_ms: exp.saturating_mul(1000),
    })
}

/// The lower-case entity path of an audience or address: `sb://host:5671/Hub/Partitions/0`,
/// `amqps://host/hub` and `hub` all give their path without scheme, host or outer slashes.
pub fn entity_path(audience: &str) -> String {
    let without_scheme = match audience.split_once("://") {
        Some((_, rest)) => match rest.split_once('/') {
            Some((_, path)) => path,
            None => "",
        },
        None => audience,
    };
    let path = without_scheme.split(['?', '#']).next().unwrap_or("");
    path.trim_matches('/').to_ascii_lowercase()
}

/// Whether a grant scope covers the (lower-case) entity path.
pub fn covers(scope: &str, path: &str) -> bool {
    scope.is_empty()
        || path == scope
        || (path.starts_with(scope) && path.as_bytes().get(scope.len()) == Some(&b'/'))
}

/// The tokens one connection has put on `$cbs`: what its links may do, until when.
#[derive(Debug, Default)]
pub struct ConnAuth {
    grants: std::sync::Mutex<Vec<Grant>>,
}

impl ConnAuth {
    /// Adds a grant, replacing one with the same scope (a renewal).
    pub fn grant(&self, grant: Grant) {
        let mut grants = super::store::lock(&self.grants);
        grants.retain(|g| g.scope != grant.scope);
        grants.push(grant);
    }

    /// Whether some unexpired grant covers the (lower-case) entity `path` at `now_ms` (Unix
    /// milliseconds).
    pub fn covers(&self, path: &str, now_ms: i64) -> bool {
        super::store::lock(&self.grants)
            .iter()
            .any(|g| g.expires_at_ms > now_ms && covers(&g.scope, path))
    }

    /// Shortens every grant to expire at `latest_ms` at the latest.
    pub fn cap(&self, latest_ms: i64) {
        for g in super::store::lock(&self.grants).iter_mut() {
            g.expires_at_ms = g.expires_at_ms.min(latest_ms);
        }
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reverses `quote_plus`: `+` is a space, `%XX` a byte.
pub fn unquote_plus(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<(String, String)> {
        vec![("send".into(), "c2VjcmV0".into())]
    }

    #[test]
    fn sas_round_trip_and_refusals() {
        let t = sas::sign("sb://localhost:5671/Telemetry", "send", "c2VjcmV0", 2_000);
        let g = check_sas(&t.token, &keys(), 1_000).unwrap();
        assert_eq!(g.scope, "telemetry");
        assert_eq!(g.expires_at_ms, 2_000_000);
        assert_eq!(
            check_sas(&t.token, &keys(), 2_000),
            Err(TokenError::Expired(2_000))
        );
        let wrong = sas::sign("sb://localhost/telemetry", "send", "other", 2_000);
        assert!(matches!(
            check_sas(&wrong.token, &keys(), 1_000),
            Err(TokenError::BadSignature(_))
        ));
        let unknown = sas::sign("sb://localhost/telemetry", "nobody", "c2VjcmV0", 2_000);
        assert!(matches!(
            check_sas(&unknown.token, &keys(), 1_000),
            Err(TokenError::UnknownKey(_))
        ));
        assert_eq!(
            check_sas("Bearer x", &keys(), 0),
            Err(TokenError::Malformed)
        );
        // A tampered expiry breaks the signature.
        let tampered = t.token.replace("se=2000", "se=9000");
        assert!(matches!(
            check_sas(&tampered, &keys(), 1_000),
            Err(TokenError::BadSignature(_))
        ));
    }

    #[test]
    fn jwt_round_trip() {
        let jwt = issue_jwt(b"secret", "https://x/t/v2.0", "t", "client", 100, 60);
        let g = check_jwt(&jwt, b"secret", 120).unwrap();
        assert_eq!(g.scope, "");
        assert_eq!(g.expires_at_ms, 160_000);
        assert!(check_jwt(&jwt, b"secret", 160).is_err());
        assert!(check_jwt(&jwt, b"other", 120).is_err());
        assert!(check_jwt("a.b", b"secret", 120).is_err());
    }

    #[test]
    fn paths_and_coverage() {
        assert_eq!(entity_path("sb://h:1/Tel/Partitions/0"), "tel/partitions/0");
        assert_eq!(entity_path("amqps://h/tel"), "tel");
        assert_eq!(entity_path("sb://h/"), "");
        assert_eq!(entity_path("sb://h"), "");
        assert_eq!(entity_path("/tel/"), "tel");
        assert!(covers("", "tel"));
        assert!(covers("tel", "tel"));
        assert!(covers("tel", "tel/partitions/1"));
        assert!(!covers("tel", "telemetry"));
        assert!(!covers("tel/partitions/1", "tel"));
    }

    #[test]
    fn connection_grants_expire_and_renew() {
        let auth = ConnAuth::default();
        assert!(!auth.covers("tel", 0));
        auth.grant(Grant {
            scope: "tel".into(),
            expires_at_ms: 100,
        });
        assert!(auth.covers("tel/partitions/0", 99));
        assert!(!auth.covers("tel", 100));
        auth.cap(50);
        assert!(!auth.covers("tel", 60));
        auth.grant(Grant {
            scope: "tel".into(),
            expires_at_ms: 200,
        });
        assert!(auth.covers("tel", 60));
    }
}
