//! `opcua.certificate` in gateway.yaml compiled: the identity the gateway writes into its OPC UA
//! application certificate when it makes one, every value checked at `file:line:col`.
//!
//! Invariants:
//! - A [`CertificatePlan`] only holds values a certificate can carry: the application URI is
//!   an absolute URI in printable ASCII (it goes into an IA5String), subject fields are within
//!   the upper bounds of RFC 5280 (appendix A.1) and hold no control characters, the country is
//!   two capital letters, host names are DNS names or IP addresses, the key size is one
//!   OPC UA's RSA policies accept.
//! - The defaults are the constants below ([`DEFAULT_KEY_SIZE`] and its neighbours), which
//!   `config::plan` re-exports beside every other default; [`CertificatePlan::default`]
//!   applies them.
//! - [`CertificatePlan::written`] remembers which keys gateway.yaml set: only those are
//!   compared with an existing certificate (a default, such as one derived from the host
//!   name, never makes an existing certificate "wrong").

use std::net::IpAddr;
use std::path::PathBuf;

use super::de::Spanned;
use super::diagnostic::Problem;
use super::gateway::CertificateSpec;

/// The gateway's OPC UA certificate: RSA key size (bits).
pub const DEFAULT_KEY_SIZE: u32 = 2048;
/// The gateway's OPC UA certificate: validity from its creation (five years).
pub const DEFAULT_VALID_DAYS: u32 = 1825;

/// The gateway's OPC UA application URI when gateway.yaml names none: unique per host, as
/// OPC UA asks of application URIs.
pub fn default_application_uri(host: &str) -> String {
    format!("urn:{host}:tagbridge")
}

/// The common name of the gateway's OPC UA certificate when gateway.yaml names none: servers
/// list client certificates by it.
pub fn default_common_name(host: &str) -> String {
    format!("tagbridge@{host}")
}

/// RFC 5280 appendix A.1: ub-common-name, ub-organization-name, ub-organizational-unit-name.
const MAX_NAME_CHARS: usize = 64;
/// RFC 5280 appendix A.1: ub-state-name.
const MAX_STATE_CHARS: usize = 128;
/// Longest application URI accepted (OPC UA sets no bound; servers keep it in fixed fields).
pub const MAX_URI_CHARS: usize = 1024;
/// RSA key sizes the OPC UA security policies (Basic256Sha256, Aes128_Sha256_RsaOaep,
/// Aes256_Sha256_RsaPss) accept between their 2048 and 4096 bit bounds.
pub const KEY_SIZES: [u32; 3] = [2048, 3072, 4096];
/// Longest validity accepted: a hundred years.
pub const MAX_VALID_DAYS: u32 = 36_500;

/// The gateway's certificate identity, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePlan {
    pub application_uri: String,
    pub common_name: String,
    /// Empty: not in the subject.
    pub organization: String,
    pub organizational_unit: String,
    pub state: String,
    pub country: String,
    /// `None`: `localhost`, 127.0.0.1, ::1 and this host's names and addresses.
    pub host_names: Option<Vec<String>>,
    pub key_size: u32,
    pub valid_days: u32,
    /// Which keys gateway.yaml wrote.
    pub written: Written,
    /// The gateway.yaml the settings come from, for the command that renews the certificate.
    pub config: Option<PathBuf>,
}

/// Which parts of [`CertificatePlan`] gateway.yaml set explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Written {
    pub application_uri: bool,
    pub common_name: bool,
    pub organization: bool,
    pub organizational_unit: bool,
    pub state: bool,
    pub country: bool,
    pub host_names: bool,
}

impl Default for CertificatePlan {
    fn default() -> Self {
        let host = this_host();
        CertificatePlan {
            application_uri: default_application_uri(&host),
            common_name: default_common_name(&host),
            organization: String::new(),
            organizational_unit: String::new(),
            state: String::new(),
            country: String::new(),
            host_names: None,
            key_size: DEFAULT_KEY_SIZE,
            valid_days: DEFAULT_VALID_DAYS,
            written: Written::default(),
            config: None,
        }
    }
}

/// This host's name, reduced to the characters a host name may hold (`localhost` when there
/// is none), for the defaults.
pub fn this_host() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// Compiles `opcua.certificate` (absent: every default) found in `config`.
///
/// Long on purpose: one short check per key, in the order gateway.yaml documents them, each
/// reporting at the key's position and all of them before giving up.
pub fn compile(
    spec: Option<&CertificateSpec>,
    config: &std::path::Path,
    problems: &mut Vec<Problem>,
) -> CertificatePlan {
    let mut plan = CertificatePlan {
        config: Some(config.to_path_buf()),
        ..CertificatePlan::default()
    };
    let Some(spec) = spec else {
        return plan;
    };
    if let Some(uri) = &spec.application_uri {
        check_uri(uri, problems);
        plan.application_uri = uri.value.clone();
        plan.written.application_uri = true;
    }
    let subject = [
        (
            &spec.common_name,
            "common_name",
            MAX_NAME_CHARS,
            &mut plan.common_name,
            &mut plan.written.common_name,
        ),
        (
            &spec.organization,
            "organization",
            MAX_NAME_CHARS,
            &mut plan.organization,
            &mut plan.written.organization,
        ),
        (
            &spec.organizational_unit,
            "organizational_unit",
            MAX_NAME_CHARS,
            &mut plan.organizational_unit,
            &mut plan.written.organizational_unit,
        ),
        (
            &spec.state,
            "state",
            MAX_STATE_CHARS,
            &mut plan.state,
            &mut plan.written.state,
        ),
    ];
    for (value, key, max, slot, written) in subject {
        if let Some(value) = value {
            check_subject_field(value, key, max, problems);
            *slot = value.value.clone();
            *written = true;
        }
    }
    if spec
        .common_name
        .as_ref()
        .is_some_and(|c| c.value.is_empty())
    {
        problems.push(
            Problem::new(
                spec.common_name.as_ref().map(|c| c.pos).unwrap_or_default(),
                "common_name is empty",
            )
            .with_hint("servers list certificates by their common name: write one, or leave the key out for the default"),
        );
    }
    if let Some(country) = &spec.country {
        let ok = country.value.len() == 2 && country.value.bytes().all(|b| b.is_ascii_uppercase());
        if !ok {
            problems.push(
                Problem::new(
                    country.pos,
                    format!(
                        "country `{}` is not two capital letters",
                        printable(&country.value)
                    ),
                )
                .with_hint("write the ISO 3166 country code, e.g. DE, FR, US"),
            );
        }
        plan.country = country.value.clone();
        plan.written.country = true;
    }
    if let Some(names) = &spec.host_names {
        let mut seen: Vec<&str> = Vec::new();
        for name in names {
            if let Err(why) = check_host_name(&name.value) {
                problems.push(
                    Problem::new(
                        name.pos,
                        format!("host name `{}` {why}", printable(&name.value)),
                    )
                    .with_hint("e.g. gw01.plant-a.local or 10.0.0.5"),
                );
            } else if seen.contains(&name.value.as_str()) {
                problems.push(Problem::new(
                    name.pos,
                    format!("host name `{}` is listed twice", name.value),
                ));
            }
            seen.push(&name.value);
        }
        plan.host_names = Some(names.iter().map(|n| n.value.clone()).collect());
        plan.written.host_names = true;
    }
    if let Some(size) = &spec.key_size {
        if !KEY_SIZES.contains(&size.value) {
            problems.push(
                Problem::new(
                    size.pos,
                    format!("key_size {} is not 2048, 3072 or 4096", size.value),
                )
                .with_hint("OPC UA's RSA security policies take keys of 2048 to 4096 bits"),
            );
        }
        plan.key_size = size.value;
    }
    if let Some(days) = &spec.valid_days {
        if days.value == 0 || days.value > MAX_VALID_DAYS {
            problems.push(Problem::new(
                days.pos,
                format!(
                    "valid_days {} is not from 1 to {MAX_VALID_DAYS}",
                    days.value
                ),
            ));
        }
        plan.valid_days = days.value;
    }
    plan
}

/// `text` with control characters shown as `\u{..}` escapes, for messages.
fn printable(text: &str) -> String {
    let short: String = text.chars().take(80).collect();
    let mut out: String = short.escape_debug().collect();
    if text.chars().count() > 80 {
        out.push('…');
    }
    out
}

fn check_uri(uri: &Spanned<String>, problems: &mut Vec<Problem>) {
    let text = &uri.value;
    let chars = text.chars().count();
    let why = if chars > MAX_URI_CHARS {
        Some(format!(
            "is {chars} characters long; at most {MAX_URI_CHARS} are allowed"
        ))
    } else if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
        Some(format!(
            "holds {}, which a certificate cannot carry in a URI",
            if c == ' ' {
                "a space".to_string()
            } else {
                format!("the character {:?}", c)
            }
        ))
    } else {
        match text.split_once(':') {
            Some((scheme, rest))
                if !rest.is_empty()
                    && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
            {
                None
            }
            _ => Some("is not an absolute URI".to_string()),
        }
    };
    if let Some(why) = why {
        problems.push(
            Problem::new(
                uri.pos,
                format!("application_uri `{}` {why}", printable(text)),
            )
            .with_hint("printable ASCII without spaces, e.g. urn:plant-a:gw01:tagbridge"),
        );
    }
}

fn check_subject_field(
    value: &Spanned<String>,
    key: &str,
    max: usize,
    problems: &mut Vec<Problem>,
) {
    let chars = value.value.chars().count();
    if chars > max {
        problems.push(
            Problem::new(
                value.pos,
                format!("{key} is {chars} characters long; a certificate takes at most {max}"),
            )
            .with_hint("RFC 5280 bounds the subject's fields; shorten it"),
        );
    } else if value.value.chars().any(char::is_control) {
        problems.push(Problem::new(
            value.pos,
            format!(
                "{key} `{}` holds a control character",
                printable(&value.value)
            ),
        ));
    }
}

/// Whether `name` is an IP address or a DNS name (RFC 1123 labels, at most 253 characters).
pub fn check_host_name(name: &str) -> Result<(), &'static str> {
    if name.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > 253 {
        return Err("is longer than the 253 characters of a DNS name");
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name
        .split('.')
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("is not an IP address: an IPv4 address has four parts of 0 to 255");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("is not a DNS name: each dot-separated part holds 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err("is not a DNS name or an IP address: a DNS name holds letters, digits, dots and inner hyphens");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_dns_names_or_addresses() {
        for ok in [
            "gw01",
            "gw01.plant-a.local",
            "10.0.0.5",
            "::1",
            "fe80::1",
            "a.b.",
        ] {
            assert_eq!(check_host_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "gw 01",
            "-gw",
            "gw-",
            "a..b",
            "gw_01",
            "ü.de",
            "300.1.1.1",
            "10.0.0",
        ] {
            assert!(check_host_name(bad).is_err(), "{bad}");
        }
        assert!(check_host_name(&"a".repeat(64)).is_err());
        assert!(check_host_name(&["a"; 130].join(".")).is_err());
    }

    #[test]
    fn the_host_default_has_only_host_name_characters() {
        let host = this_host();
        assert!(!host.is_empty() && host.len() <= 63, "{host}");
        assert!(
            host.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'),
            "{host}"
        );
        let plan = CertificatePlan::default();
        assert_eq!(plan.application_uri, format!("urn:{host}:tagbridge"));
        assert_eq!(plan.written, Written::default());
    }
}
