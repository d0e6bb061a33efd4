//! The gateway's own OPC UA application certificate: made from gateway.yaml's
//! `opcua.certificate` ([`CertificatePlan`]) when `<pki>/own/cert.der` does not exist, read and
//! checked against those settings when it does.
//!
//! Invariants:
//! - An existing certificate is never replaced behind the operator's back: servers trust it by
//!   its thumbprint, so a new one would lock the gateway out until it is trusted again. When
//!   it no longer matches what gateway.yaml writes (only the keys gateway.yaml sets are
//!   compared), the gateway logs one warning per difference set naming the file and the
//!   command that makes a new one (`tagbridge opcua certificate --renew`), and keeps using it.
//! - The application URI the gateway sends in CreateSession is the one in the certificate in
//!   use (its first URI subject alternative name), so servers that check the two (asyncua,
//!   OPC UA Part 4, 5.6.2) accept it even while the settings and the certificate disagree.
//! - The private key is written with mode 0600 in a 0700 directory.
//! - A certificate without its key (or the reverse) is an error saying which file is missing;
//!   nothing is overwritten.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use opcua::crypto::{CertificateStore, X509Data, X509};
use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Any, Decode};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

use super::OpcUaError;
use crate::config::plan::CertificatePlan;

/// The certificate, relative to the PKI directory.
pub const CERT_FILE: &str = "own/cert.der";
/// Its private key, relative to the PKI directory.
pub const KEY_FILE: &str = "private/private.pem";

const CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const C: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.6");
const ST: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.8");
const O: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.10");
const OU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.11");

/// What is in the gateway's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The first URI subject alternative name (`None`: the certificate has none).
    pub application_uri: Option<String>,
    pub common_name: String,
    pub organization: String,
    pub organizational_unit: String,
    pub state: String,
    pub country: String,
    /// DNS names and IP addresses among the subject alternative names.
    pub host_names: Vec<String>,
    /// The subject as text, e.g. `CN=tagbridge@gw01,O=Acme`.
    pub subject: String,
    pub thumbprint: String,
    /// The last day it is valid (RFC 3339), when readable.
    pub not_after: Option<String>,
    /// Made just now.
    pub created: bool,
}

/// The certificate and key paths in `pki`.
pub fn paths(pki: &Path) -> (PathBuf, PathBuf) {
    (pki.join(CERT_FILE), pki.join(KEY_FILE))
}

/// Makes the certificate when neither file exists, else reads it; warns (once per process
/// and difference) when it no longer matches `plan`.
pub fn ensure(pki: &Path, plan: &CertificatePlan) -> Result<OwnCertificate, OpcUaError> {
    let (cert_path, key_path) = paths(pki);
    let own = match (cert_path.exists(), key_path.exists()) {
        (true, true) => read(&cert_path, &key_path)?,
        (false, false) => create(pki, plan)?,
        (has_cert, _) => {
            let (there, missing) = if has_cert {
                (&cert_path, &key_path)
            } else {
                (&key_path, &cert_path)
            };
            return Err(OpcUaError::Certificate(format!(
                "the gateway's certificate is incomplete: {} exists but {} does not; restore the missing file, \
                 or move both away to have a new certificate made (then trust it on the servers again)",
                there.display(),
                missing.display()
            )));
        }
    };
    let differences = differences(&own, plan);
    if !differences.is_empty() {
        static WARNED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
        let key = format!("{}|{}", own.cert.display(), differences.join("|"));
        let first = WARNED
            .lock()
            .map(|mut w| w.get_or_insert_with(HashSet::new).insert(key))
            .unwrap_or(true);
        if first {
            tracing::warn!(
                message = "The gateway's OPC UA certificate does not match gateway.yaml; it is used as it is.",
                file = %own.cert.display(),
                differences = %differences.join("; "),
                next_step = %renew_hint(plan, pki),
            );
        }
    }
    Ok(own)
}

/// The command that makes a new certificate from `plan`'s settings, and what follows.
pub fn renew_hint(plan: &CertificatePlan, pki: &Path) -> String {
    let config = plan
        .config
        .as_ref()
        .map(|c| format!(" -c {}", super::shell_quote(&c.display().to_string())))
        .unwrap_or_default();
    format!(
        "run `tagbridge opcua certificate --renew{config} --pki-dir {}` (the old files are kept beside the new ones), \
         then trust the new certificate on every server and restart the gateway",
        super::shell_quote(&pki.display().to_string())
    )
}

/// What gateway.yaml sets that `own` does not carry, one line each; keys gateway.yaml leaves
/// out are not compared.
pub fn differences(own: &OwnCertificate, plan: &CertificatePlan) -> Vec<String> {
    let mut out = Vec::new();
    let w = &plan.written;
    if w.application_uri && own.application_uri.as_deref() != Some(plan.application_uri.as_str()) {
        out.push(format!(
            "application_uri is `{}` in gateway.yaml but `{}` in the certificate (servers see `{}`)",
            plan.application_uri,
            own.application_uri.as_deref().unwrap_or("none"),
            own.application_uri.as_deref().unwrap_or(&plan.application_uri),
        ));
    }
    let fields = [
        (
            w.common_name,
            "common_name",
            &plan.common_name,
            &own.common_name,
        ),
        (
            w.organization,
            "organization",
            &plan.organization,
            &own.organization,
        ),
        (
            w.organizational_unit,
            "organizational_unit",
            &plan.organizational_unit,
            &own.organizational_unit,
        ),
        (w.state, "state", &plan.state, &own.state),
        (w.country, "country", &plan.country, &own.country),
    ];
    for (written, key, wanted, has) in fields {
        if written && wanted != has {
            out.push(format!(
                "{key} is `{wanted}` in gateway.yaml but `{has}` in the certificate"
            ));
        }
    }
    if let (true, Some(wanted)) = (w.host_names, &plan.host_names) {
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|h| !own.host_names.iter().any(|o| same_host(o, h)))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            out.push(format!(
                "host_names {} are not in the certificate",
                missing.join(", ")
            ));
        }
    }
    out
}

/// Host names compare without case; IP addresses by value (`::1` = `0:0::1`).
fn same_host(a: &str, b: &str) -> bool {
    match (a.parse::<std::net::IpAddr>(), b.parse::<std::net::IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a
            .trim_end_matches('.')
            .eq_ignore_ascii_case(b.trim_end_matches('.')),
    }
}

/// Moves the certificate and key aside (`*.replaced-<UTC time>`) and makes new ones from
/// `plan`. Returns the new certificate and where the old files went.
pub fn renew(
    pki: &Path,
    plan: &CertificatePlan,
) -> Result<(OwnCertificate, Vec<PathBuf>), OpcUaError> {
    let (cert_path, key_path) = paths(pki);
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let mut moved = Vec::new();
    for path in [&cert_path, &key_path] {
        if path.exists() {
            let mut name = path.as_os_str().to_os_string();
            name.push(format!(".replaced-{stamp}"));
            let to = PathBuf::from(name);
            std::fs::rename(path, &to).map_err(|e| {
                OpcUaError::Certificate(format!("cannot move {} aside: {e}", path.display()))
            })?;
            moved.push(to);
        }
    }
    Ok((create(pki, plan)?, moved))
}

/// `text` escaped for the RFC 4514 string async-opcua builds the subject from.
fn rfc4514(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let last = text.chars().count().saturating_sub(1);
    for (i, c) in text.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The certificate data for `plan`.
fn x509_data(plan: &CertificatePlan) -> X509Data {
    let alt_host_names = X509Data::alt_host_names(
        &plan.application_uri,
        plan.host_names.clone(),
        plan.host_names.is_none(),
        plan.host_names.is_none(),
        plan.host_names.is_none(),
    );
    X509Data {
        key_size: plan.key_size,
        common_name: rfc4514(&plan.common_name),
        organization: rfc4514(&plan.organization),
        organizational_unit: rfc4514(&plan.organizational_unit),
        country: rfc4514(&plan.country),
        state: rfc4514(&plan.state),
        alt_host_names,
        certificate_duration_days: plan.valid_days,
    }
}

fn create(pki: &Path, plan: &CertificatePlan) -> Result<OwnCertificate, OpcUaError> {
    let (cert_path, key_path) = paths(pki);
    let io = |path: &Path, e: std::io::Error| {
        OpcUaError::Certificate(format!("cannot create {}: {e}", path.display()))
    };
    for (dir, mode) in [(cert_path.parent(), 0o755), (key_path.parent(), 0o700)] {
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
            set_mode(dir, mode).map_err(|e| io(dir, e))?;
        }
    }
    CertificateStore::create_certificate_and_key(&x509_data(plan), false, &cert_path, &key_path)
        .map_err(|e| {
            OpcUaError::Certificate(format!(
                "cannot make the gateway's certificate {}: {e}",
                cert_path.display()
            ))
        })?;
    set_mode(&key_path, 0o600).map_err(|e| io(&key_path, e))?;
    let mut own = read(&cert_path, &key_path)?;
    own.created = true;
    tracing::info!(
        message = "Made the gateway's OPC UA certificate; trust it on the servers that ask.",
        file = %own.cert.display(),
        application_uri = own.application_uri.as_deref().unwrap_or(""),
        subject = %own.subject,
        thumbprint = %own.thumbprint,
    );
    Ok(own)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

/// Reads the certificate at `cert` (its key is read by async-opcua when connecting).
pub fn read(cert: &Path, key: &Path) -> Result<OwnCertificate, OpcUaError> {
    let bad = |why: String| {
        OpcUaError::Certificate(format!(
            "the gateway's certificate {} cannot be read: {why}; move it and {} away to have a new one made \
             (then trust it on the servers again)",
            cert.display(),
            key.display()
        ))
    };
    let der = std::fs::read(cert).map_err(|e| bad(e.to_string()))?;
    let parsed = x509_cert::Certificate::from_der(&der).map_err(|e| bad(e.to_string()))?;
    let opcua_cert = X509::from_der(&der).map_err(|e| bad(format!("{e:?}")))?;
    let mut own = OwnCertificate {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        application_uri: None,
        common_name: String::new(),
        organization: String::new(),
        organizational_unit: String::new(),
        state: String::new(),
        country: String::new(),
        host_names: Vec::new(),
        subject: parsed.tbs_certificate.subject.to_string(),
        thumbprint: opcua_cert.thumbprint().as_hex_string(),
        not_after: opcua_cert.not_after().ok().map(|t| t.to_rfc3339()),
        created: false,
    };
    for rdn in parsed.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter() {
            let slot = match atv.oid {
                CN => &mut own.common_name,
                O => &mut own.organization,
                OU => &mut own.organizational_unit,
                ST => &mut own.state,
                C => &mut own.country,
                _ => continue,
            };
            if let Some(text) = text_of(&atv.value) {
                *slot = text;
            }
        }
    }
    if let Ok(Some((_, SubjectAltName(names)))) = parsed.tbs_certificate.get::<SubjectAltName>() {
        for name in names {
            match name {
                GeneralName::UniformResourceIdentifier(uri) => {
                    own.application_uri.get_or_insert_with(|| uri.to_string());
                }
                GeneralName::DnsName(dns) => own.host_names.push(dns.to_string()),
                GeneralName::IpAddress(ip) => {
                    let bytes = ip.as_bytes();
                    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
                        own.host_names
                            .push(std::net::Ipv4Addr::from(v4).to_string());
                    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
                        own.host_names
                            .push(std::net::Ipv6Addr::from(v6).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(own)
}

fn text_of(value: &Any) -> Option<String> {
    if let Ok(s) = Utf8StringRef::try_from(value) {
        return Some(s.as_str().to_string());
    }
    if let Ok(s) = PrintableStringRef::try_from(value) {
        return Some(s.as_str().to_string());
    }
    Ia5StringRef::try_from(value)
        .ok()
        .map(|s| s.as_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::certificate::Written;

    fn plan() -> CertificatePlan {
        CertificatePlan {
            application_uri: "urn:plant-a:gw01:tagbridge".into(),
            common_name: "gw01 #1, \"east\"".into(),
            organization: "Acme, Inc.+Co;<x>=y\\z ".into(),
            organizational_unit: "OT".into(),
            state: "Bayern".into(),
            country: "DE".into(),
            host_names: Some(vec!["gw01.plant-a.local".into(), "10.0.0.5".into()]),
            key_size: 2048,
            valid_days: 30,
            written: Written {
                application_uri: true,
                common_name: true,
                organization: true,
                organizational_unit: true,
                state: true,
                country: true,
                host_names: true,
            },
            config: Some(PathBuf::from("/etc/tagbridge/gateway.yaml")),
        }
    }

    #[test]
    fn a_certificate_carries_every_setting_even_with_special_characters() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan();
        let own = ensure(dir.path(), &plan).unwrap();
        assert!(own.created);
        assert_eq!(
            own.application_uri.as_deref(),
            Some("urn:plant-a:gw01:tagbridge")
        );
        assert_eq!(own.common_name, plan.common_name);
        assert_eq!(own.organization, plan.organization);
        assert_eq!(own.organizational_unit, "OT");
        assert_eq!(own.state, "Bayern");
        assert_eq!(own.country, "DE");
        assert_eq!(own.host_names, ["gw01.plant-a.local", "10.0.0.5"]);
        assert!(
            differences(&own, &plan).is_empty(),
            "{:?}",
            differences(&own, &plan)
        );
        // Made once: the second call reads the same file.
        let again = ensure(dir.path(), &plan).unwrap();
        assert!(!again.created);
        assert_eq!(again.thumbprint, own.thumbprint);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&own.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn the_default_identity_names_this_host_and_no_dublin() {
        let dir = tempfile::tempdir().unwrap();
        let plan = CertificatePlan::default();
        let own = ensure(dir.path(), &plan).unwrap();
        assert_eq!(
            own.application_uri.as_deref(),
            Some(plan.application_uri.as_str())
        );
        assert_eq!(own.common_name, plan.common_name);
        assert_eq!(own.country, "");
        assert_eq!(own.state, "");
        assert!(own.host_names.iter().any(|h| h == "localhost"), "{own:?}");
    }

    #[test]
    fn a_changed_setting_is_reported_and_the_certificate_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure(dir.path(), &plan()).unwrap();
        let mut changed = plan();
        changed.application_uri = "urn:plant-b:tagbridge".into();
        changed.country = "FR".into();
        changed.host_names = Some(vec!["10.0.0.5".into(), "gw02".into()]);
        let own = ensure(dir.path(), &changed).unwrap();
        assert_eq!(
            own.thumbprint, first.thumbprint,
            "the certificate was replaced"
        );
        assert_eq!(
            differences(&own, &changed),
            [
                "application_uri is `urn:plant-b:tagbridge` in gateway.yaml but `urn:plant-a:gw01:tagbridge` in the certificate (servers see `urn:plant-a:gw01:tagbridge`)",
                "country is `FR` in gateway.yaml but `DE` in the certificate",
                "host_names gw02 are not in the certificate",
            ]
        );
        // Keys gateway.yaml does not write are not compared.
        changed.written = Written::default();
        assert!(differences(&own, &changed).is_empty());
        assert_eq!(
            renew_hint(&plan(), dir.path()),
            format!(
                "run `tagbridge opcua certificate --renew -c /etc/tagbridge/gateway.yaml --pki-dir {}` (the old files are kept beside the new ones), then trust the new certificate on every server and restart the gateway",
                dir.path().display()
            )
        );
    }

    #[test]
    fn renewing_keeps_the_old_files_and_makes_a_matching_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure(dir.path(), &plan()).unwrap();
        let mut changed = plan();
        changed.application_uri = "urn:plant-b:tagbridge".into();
        let (own, moved) = renew(dir.path(), &changed).unwrap();
        assert_ne!(own.thumbprint, first.thumbprint);
        assert!(differences(&own, &changed).is_empty());
        assert_eq!(moved.len(), 2);
        assert!(moved.iter().all(|m| m.exists()), "{moved:?}");
    }

    #[test]
    fn a_certificate_without_its_key_is_an_error_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let own = ensure(dir.path(), &plan()).unwrap();
        std::fs::remove_file(&own.key).unwrap();
        let error = ensure(dir.path(), &plan()).unwrap_err().to_string();
        assert!(error.contains(&own.cert.display().to_string()), "{error}");
        assert!(error.contains(&own.key.display().to_string()), "{error}");
        assert!(
            !own.key.exists(),
            "nothing may be made beside a lone certificate"
        );
        std::fs::write(&own.key, "x").unwrap();
        std::fs::write(&own.cert, "not a certificate").unwrap();
        let error = ensure(dir.path(), &plan()).unwrap_err().to_string();
        assert!(error.contains("cannot be read"), "{error}");
    }
}
