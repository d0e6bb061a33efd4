//! Event Hubs connection strings, parsed as Azure's SDKs parse them.
//!
//! `Endpoint=sb://NS.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=…;EntityPath=hub`
//!
//! Like azure-core: `key=value` pairs split on `;`, the value at the first `=` (keys contain
//! none, base64 values do), keys case-insensitive and in any order, surrounding white space and
//! newlines and a trailing `;` ignored, a key given twice is an error. Either a key name and key,
//! or a ready `SharedAccessSignature`. Errors name the part that is wrong and never print a key
//! or signature.

use std::fmt;

/// A parsed connection string.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// Host name of the namespace, e.g. `ns.servicebus.windows.net`.
    pub host: String,
    /// A port written in the endpoint (only the emulator uses one).
    pub port: Option<u16>,
    pub hub: String,
    pub credential: SasCredential,
    /// `UseDevelopmentEmulator=true`: plain AMQP, no TLS, as Microsoft's emulator expects.
    pub use_emulator: bool,
}

/// How the connection string authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum SasCredential {
    /// A shared access policy: the gateway signs its own tokens and renews them.
    Key { name: String, key: String },
    /// A ready-made token with its expiry; it cannot be renewed.
    Signature {
        token: String,
        expires_at: Option<i64>,
    },
}

// Secrets never reach logs through Debug.
impl fmt::Debug for SasCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SasCredential::Key { name, .. } => write!(f, "Key({name:?}, hidden)"),
            SasCredential::Signature { expires_at, .. } => {
                write!(f, "Signature(expires {expires_at:?}, hidden)")
            }
        }
    }
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("hub", &self.hub)
            .field("credential", &self.credential)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    #[error("the connection string is empty")]
    Empty,
    // `start` is kept for tests, never shown: the part may be a pasted key.
    #[error("part {index} of the connection string is not key=value (a key pasted without `SharedAccessKey=`?)")]
    NotKeyValue { index: usize },
    #[error("`{0}` appears twice in the connection string")]
    Duplicate(String),
    #[error("the connection string has no Endpoint=sb://<namespace>.servicebus.windows.net/")]
    NoEndpoint,
    #[error("Endpoint `{0}` is not sb://<host>[:port]/")]
    BadEndpoint(String),
    #[error(
        "SharedAccessKeyName and SharedAccessKey go together; the connection string has only {0}"
    )]
    HalfKey(&'static str),
    #[error("the connection string has neither SharedAccessKey nor SharedAccessSignature")]
    NoCredential,
    #[error("the connection string has both SharedAccessKey and SharedAccessSignature; keep one")]
    BothCredentials,
    #[error(
        "no event hub named: add EntityPath=<hub> to the connection string or `hub:` to the sink"
    )]
    NoHub,
    #[error(
        "the connection string is for hub `{in_string}` but the sink names hub `{configured}`"
    )]
    HubMismatch {
        in_string: String,
        configured: String,
    },
    #[error("part {index} of the connection string has an unknown name (expected Endpoint, SharedAccessKeyName, SharedAccessKey, EntityPath, SharedAccessSignature or UseDevelopmentEmulator; a key pasted without `SharedAccessKey=`?)")]
    UnknownKey { index: usize },
}

impl ConnectionString {
    /// Parses `text`; `hub` is the hub named in the configuration, if any.
    pub fn parse(text: &str, hub: Option<&str>) -> Result<Self, ConnectionStringError> {
        use ConnectionStringError as E;
        let text = text.trim().trim_end_matches(';');
        if text.is_empty() {
            return Err(E::Empty);
        }
        const KNOWN: [&str; 7] = [
            "endpoint",
            "sharedaccesskeyname",
            "sharedaccesskey",
            "entitypath",
            "sharedaccesssignature",
            "usedevelopmentemulator",
            "hostname",
        ];
        let mut parts: Vec<(String, String)> = Vec::new();
        for (index, part) in text.split(';').enumerate() {
            let part = part.trim();
            let Some((key, value)) = part.split_once('=') else {
                return Err(E::NotKeyValue { index: index + 1 });
            };
            let (key, value) = (key.trim().to_ascii_lowercase(), value.trim().to_string());
            if key.is_empty() || value.is_empty() {
                return Err(E::NotKeyValue { index: index + 1 });
            }
            // Only known names are ever shown: anything else may be a pasted key.
            if !KNOWN.contains(&key.as_str()) {
                return Err(E::UnknownKey { index: index + 1 });
            }
            if parts.iter().any(|(k, _)| *k == key) {
                return Err(E::Duplicate(key));
            }
            parts.push((key, value));
        }
        let get = |k: &str| {
            parts
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let endpoint = get("endpoint")
            .or_else(|| get("hostname"))
            .ok_or(E::NoEndpoint)?;
        let (host, port) = parse_endpoint(&endpoint)?;
        let credential = match (
            get("sharedaccesskeyname"),
            get("sharedaccesskey"),
            get("sharedaccesssignature"),
        ) {
            (Some(name), Some(key), None) => SasCredential::Key { name, key },
            (None, None, Some(token)) => {
                let expires_at = token
                    .split('&')
                    .find_map(|p| {
                        p.trim_start_matches("SharedAccessSignature ")
                            .strip_prefix("se=")
                    })
                    .and_then(|s| s.parse().ok());
                SasCredential::Signature { token, expires_at }
            }
            (_, Some(_), Some(_)) => return Err(E::BothCredentials),
            (Some(_), None, _) => return Err(E::HalfKey("SharedAccessKeyName")),
            (None, Some(_), _) => return Err(E::HalfKey("SharedAccessKey")),
            (None, None, None) => return Err(E::NoCredential),
        };
        let hub = match (get("entitypath"), hub) {
            (Some(in_string), Some(configured)) if in_string != configured => {
                return Err(E::HubMismatch {
                    in_string,
                    configured: configured.to_string(),
                })
            }
            (Some(h), _) => h,
            (None, Some(h)) => h.to_string(),
            (None, None) => return Err(E::NoHub),
        };
        let use_emulator =
            get("usedevelopmentemulator").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        Ok(ConnectionString {
            host,
            port,
            hub,
            credential,
            use_emulator,
        })
    }

    /// The audience a token must cover, as Microsoft's SDKs build it: `sb://<host>/<hub>`
    /// (no port).
    pub fn audience(&self) -> String {
        format!("sb://{}/{}", self.host, self.hub)
    }

    /// The namespace's name, for messages (`ns` of `ns.servicebus.windows.net`).
    pub fn namespace(&self) -> &str {
        self.host.split('.').next().unwrap_or(&self.host)
    }
}

fn parse_endpoint(endpoint: &str) -> Result<(String, Option<u16>), ConnectionStringError> {
    let bad = || ConnectionStringError::BadEndpoint(endpoint.to_string());
    let rest = endpoint
        .strip_prefix("sb://")
        .or_else(|| endpoint.strip_prefix("amqps://"))
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().map_err(|_| bad())?)),
        None => (authority, None),
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace()) {
        return Err(bad());
    }
    Ok((host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConnectionStringError as E;

    const KEY: &str = "c2VjcmV0LWtleS1ub3QtcmVhbA==";

    fn parse(s: &str) -> Result<ConnectionString, E> {
        ConnectionString::parse(s, None)
    }

    #[test]
    fn parses_the_portal_form() {
        let cs = parse(&format!(
            "Endpoint=sb://plant-a.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey={KEY};EntityPath=telemetry"
        ))
        .unwrap();
        assert_eq!(cs.host, "plant-a.servicebus.windows.net");
        assert_eq!(cs.port, None);
        assert_eq!(cs.hub, "telemetry");
        assert_eq!(cs.namespace(), "plant-a");
        assert_eq!(
            cs.audience(),
            "sb://plant-a.servicebus.windows.net/telemetry"
        );
        assert_eq!(
            cs.credential,
            SasCredential::Key {
                name: "send".into(),
                key: KEY.into()
            }
        );
    }

    #[test]
    fn accepts_case_order_whitespace_and_trailing_semicolons() {
        let cs = parse(&format!(
            "  entitypath=telemetry;\n sharedaccesskey={KEY} ;\r\n SHAREDACCESSKEYNAME=send;ENDPOINT=sb://Plant-A.servicebus.windows.net:5671/;\n"
        ))
        .unwrap();
        assert_eq!(cs.host, "plant-a.servicebus.windows.net");
        assert_eq!(cs.port, Some(5671));
        assert_eq!(cs.hub, "telemetry");
    }

    #[test]
    fn hub_from_config_or_string_and_mismatch() {
        let base = format!(
            "Endpoint=sb://a.servicebus.windows.net/;SharedAccessKeyName=s;SharedAccessKey={KEY}"
        );
        assert_eq!(ConnectionString::parse(&base, Some("h")).unwrap().hub, "h");
        assert_eq!(parse(&base), Err(E::NoHub));
        let with = format!("{base};EntityPath=x");
        assert_eq!(
            ConnectionString::parse(&with, Some("y")),
            Err(E::HubMismatch {
                in_string: "x".into(),
                configured: "y".into()
            })
        );
        assert_eq!(ConnectionString::parse(&with, Some("x")).unwrap().hub, "x");
    }

    #[test]
    fn errors_name_the_part_and_never_the_key() {
        let cases = [
            ("", E::Empty),
            ("Endpoint=sb://a/;garbage", E::NotKeyValue { index: 2 }),
            (
                "Endpoint=http://a/;SharedAccessKeyName=s;SharedAccessKey=k",
                E::BadEndpoint("http://a/".into()),
            ),
            (
                "Endpoint=sb://a/;SharedAccessKeyName=s;EntityPath=h",
                E::HalfKey("SharedAccessKeyName"),
            ),
            (
                "Endpoint=sb://a/;SharedAccessKey=k;EntityPath=h",
                E::HalfKey("SharedAccessKey"),
            ),
            ("Endpoint=sb://a/;EntityPath=h", E::NoCredential),
            (
                "SharedAccessKeyName=s;SharedAccessKey=k;EntityPath=h",
                E::NoEndpoint,
            ),
            (
                "Endpoint=sb://a/;endpoint=sb://b/",
                E::Duplicate("endpoint".into()),
            ),
            (
                "Endpoint=sb://a/;SharedAccesKey=k",
                E::UnknownKey { index: 2 },
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err, expected, "{text}");
            assert!(!err.to_string().contains("=k"), "{err}");
        }
        let debug = format!(
            "{:?}",
            parse(&format!(
                "Endpoint=sb://a/;SharedAccessKeyName=s;SharedAccessKey={KEY};EntityPath=h"
            ))
            .unwrap()
        );
        assert!(!debug.contains(KEY), "{debug}");
    }

    proptest::proptest! {
        /// However a key is misplaced (bare, without `SharedAccessKey=`, as a name, twice, in a
        /// damaged string), no error shows any eight characters of it, in Display or Debug.
        #[test]
        fn no_error_shows_any_part_of_a_key(
            key in "[A-Za-z0-9+/]{12,44}={0,2}",
            shape in 0usize..8,
        ) {
            let text = match shape {
                0 => format!("Endpoint=sb://a/;SharedAccessKeyName=s;{key};EntityPath=h"),
                1 => format!("Endpoint=sb://a/;SharedAccessKeyName=s;{key}"),
                2 => key.to_string(),
                3 => format!("Endpoint=sb://a/;{key}=x;EntityPath=h"),
                4 => format!("Endpoint=sb://a/;SharedAccessKeyName=s;SharedAccessKey={key};SharedAccessKey={key}"),
                5 => format!("Endpoint=sb://a/;SharedAccessKey={key};EntityPath=h"),
                6 => format!("Endpoint=sb://a/;SharedAccessKeyName={key}=;EntityPath=h"),
                _ => format!("Endpoint=sb://a/;SharedAccessKeyName=s;SharedAccessKey={key};SharedAccessSignature={key};EntityPath=h"),
            };
            if let Err(err) = parse(&text) {
                let shown = format!("{err} {err:?}");
                for window in key.as_bytes().windows(8) {
                    let window = std::str::from_utf8(window).unwrap_or_default();
                    proptest::prop_assert!(!shown.contains(window), "{text} -> {shown}");
                }
            }
        }
    }

    #[test]
    fn a_ready_signature_carries_its_expiry() {
        let cs = parse("Endpoint=sb://a.servicebus.windows.net/;SharedAccessSignature=SharedAccessSignature sr=x&sig=y&se=1900000000&skn=s;EntityPath=h").unwrap();
        assert!(matches!(
            cs.credential,
            SasCredential::Signature {
                expires_at: Some(1_900_000_000),
                ..
            }
        ));
    }

    #[test]
    fn emulator_flag() {
        let cs = parse("Endpoint=sb://localhost;SharedAccessKeyName=s;SharedAccessKey=k;EntityPath=h;UseDevelopmentEmulator=true").unwrap();
        assert!(cs.use_emulator);
    }
}
