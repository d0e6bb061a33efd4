//! `tagbridge opcua …`: OPC UA helpers. `trust` fetches a server's certificate and puts it
//! into the PKI directory's `trusted/` folder, after an optional thumbprint check.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::config::tagmap::{SecurityMode, SecurityPolicy};
use crate::mapping::plan::{SecretSource, UserPlan};
use crate::mapping::{OpcUaPlan, SourcePlan};

#[derive(Debug, clap::Subcommand)]
pub enum OpcUaCommand {
    /// Trust an OPC UA server's certificate: fetch it and copy it into `<pki>/trusted/`.
    ///
    /// Compare the printed thumbprint with the one the server's administrator gives you, or
    /// pass it with --thumbprint to have it checked.
    Trust(TrustArgs),
    /// Show the gateway's own certificate (the file to trust on a server), making it from
    /// gateway.yaml's `opcua.certificate` when it does not exist yet.
    ///
    /// With --renew, the current certificate and key are moved aside and a new pair is made
    /// (every server must then trust the new certificate).
    Certificate(CertificateArgs),
}

#[derive(Debug, clap::Args)]
pub struct CertificateArgs {
    /// gateway.yaml: its `opcua.certificate` settings, and the PKI directories of its OPC UA
    /// tag maps.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// PKI directory (default: those of gateway.yaml's OPC UA tag maps, else
    /// $TAGBRIDGE_PKI_DIR, $STATE_DIRECTORY/opcua-pki or ./opcua-pki).
    #[arg(long)]
    pub pki_dir: Option<PathBuf>,
    /// Move the current certificate and key aside and make new ones.
    #[arg(long)]
    pub renew: bool,
}

#[derive(Debug, clap::Args)]
pub struct TrustArgs {
    /// A tag map (its endpoint, security and pki_dir are used), or an opc.tcp:// URL.
    pub target: String,
    /// Refuse unless the certificate has this SHA-1 thumbprint (hex, `:` allowed).
    #[arg(long)]
    pub thumbprint: Option<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// How to reach a server named by URL (tag maps carry these settings themselves).
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// Security policy: none, basic256sha256, aes128_sha256_rsaoaep, aes256_sha256_rsapss.
    #[arg(long, default_value = "basic256sha256")]
    pub security: String,
    /// Security mode: sign or sign_and_encrypt (ignored for none).
    #[arg(long, default_value = "sign_and_encrypt")]
    pub mode: String,
    /// Log in as this user (password from --password-env or --password-file).
    #[arg(long)]
    pub user: Option<String>,
    /// Environment variable holding the password.
    #[arg(long)]
    pub password_env: Option<String>,
    /// File holding the password.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// PKI directory (gateway certificate, trusted and rejected server certificates).
    #[arg(long)]
    pub pki_dir: Option<PathBuf>,
    /// gateway.yaml whose `opcua.certificate` is used if the gateway's certificate must be
    /// made (it is made on first use).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
}

/// The certificate settings of gateway.yaml at `config` (every default without one).
fn certificate_plan(
    config: Option<&std::path::Path>,
) -> anyhow::Result<std::sync::Arc<crate::config::plan::CertificatePlan>> {
    match config {
        None => Ok(Default::default()),
        Some(path) => match crate::config::plan::load(path) {
            Ok(plan) => Ok(plan.opcua_certificate),
            Err(report) => bail!("{}", report.render()),
        },
    }
}

impl ConnArgs {
    /// The source plan for `endpoint`.
    pub fn plan(&self, endpoint: &str) -> anyhow::Result<OpcUaPlan> {
        if !endpoint.starts_with("opc.tcp://") {
            bail!("`{endpoint}` is not an OPC UA endpoint: write opc.tcp://host:port");
        }
        let policy = match self.security.as_str() {
            "none" => SecurityPolicy::None,
            "basic256sha256" => SecurityPolicy::Basic256Sha256,
            "aes128_sha256_rsaoaep" => SecurityPolicy::Aes128Sha256RsaOaep,
            "aes256_sha256_rsapss" => SecurityPolicy::Aes256Sha256RsaPss,
            other => bail!("unknown --security `{other}`: none, basic256sha256, aes128_sha256_rsaoaep or aes256_sha256_rsapss"),
        };
        let mode = if policy == SecurityPolicy::None {
            SecurityMode::None
        } else {
            match self.mode.as_str() {
                "sign" => SecurityMode::Sign,
                "sign_and_encrypt" => SecurityMode::SignAndEncrypt,
                other => bail!("unknown --mode `{other}`: sign or sign_and_encrypt"),
            }
        };
        let user = match (&self.user, &self.password_env, &self.password_file) {
            (None, None, None) => UserPlan::Anonymous,
            (Some(u), Some(env), None) => UserPlan::Username {
                username: u.clone(),
                password: SecretSource::Env(env.clone()),
            },
            (Some(u), None, Some(file)) => UserPlan::Username {
                username: u.clone(),
                password: SecretSource::File(std::path::absolute(file).unwrap_or(file.clone())),
            },
            _ => bail!("--user needs exactly one of --password-env or --password-file"),
        };
        Ok(OpcUaPlan {
            endpoint: endpoint.to_string(),
            security_policy: policy,
            security_mode: mode,
            user,
            publishing_interval: Duration::from_secs(1),
            pki_dir: self
                .pki_dir
                .as_ref()
                .map(|d| std::path::absolute(d).unwrap_or(d.clone())),
            trust_on_first_use: false,
            timestamps: Default::default(),
            uncertain: Default::default(),
            max_items_per_subscription: 0,
            max_notifications_per_publish:
                crate::mapping::compile::DEFAULT_MAX_NOTIFICATIONS_PER_PUBLISH,
            monitoring: Vec::new(),
            certificate: certificate_plan(self.config.as_deref())?,
            events: Vec::new(),
            structures: Default::default(),
        })
    }
}

pub fn run(command: OpcUaCommand) -> ExitCode {
    let result = match command {
        OpcUaCommand::Trust(args) => trust(&args),
        OpcUaCommand::Certificate(args) => certificate(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(super::EXIT_FAILURE)
        }
    }
}

/// `tagbridge opcua certificate`: shows (makes, renews) the gateway's certificate in every
/// PKI directory gateway.yaml's OPC UA tag maps use.
fn certificate(args: &CertificateArgs) -> anyhow::Result<()> {
    use crate::source::opcua::{connect, own_certificate};
    let settings = certificate_plan(args.config.as_deref())?;
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = &args.pki_dir {
        dirs.push(dir.clone());
    } else if let Some(config) = &args.config {
        let plan = match crate::config::plan::load(config) {
            Ok(plan) => plan,
            Err(report) => bail!("{}", report.render()),
        };
        let maps = match crate::mapping::load_all(&plan.tag_maps) {
            Ok(maps) => maps,
            Err(report) => bail!("{}", report.render()),
        };
        for map in maps {
            if let SourcePlan::OpcUa(o) = map.source {
                let dir = connect::pki_dir(&o);
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
        }
    }
    if dirs.is_empty() {
        dirs.push(connect::default_pki_dir());
    }
    for pki in dirs {
        let (own, moved) = if args.renew {
            own_certificate::renew(&pki, &settings)?
        } else {
            (own_certificate::ensure(&pki, &settings)?, Vec::new())
        };
        let state = match (args.renew, own.created) {
            (true, _) => "renewed",
            (false, true) => "made now",
            (false, false) => "existing",
        };
        println!("gateway certificate {} ({state})", own.cert.display());
        println!(
            "  application URI: {}",
            own.application_uri.as_deref().unwrap_or("none")
        );
        println!("  subject:         {}", own.subject);
        println!("  host names:      {}", own.host_names.join(", "));
        println!("  thumbprint:      {}", own.thumbprint);
        if let Some(until) = &own.not_after {
            println!("  valid until:     {until}");
        }
        for old in moved {
            println!("  old file kept:   {}", old.display());
        }
        for difference in own_certificate::differences(&own, &settings) {
            println!("  differs from gateway.yaml: {difference}");
        }
        println!(
            "  next step: copy {} into each server's trusted certificates (or accept it in the server's certificate list)",
            crate::source::opcua::shell_quote(&own.cert.display().to_string())
        );
    }
    Ok(())
}

fn trust(args: &TrustArgs) -> anyhow::Result<()> {
    let by_url = args.target.starts_with("opc.tcp://");
    let plan = if by_url {
        args.conn.plan(&args.target)?
    } else {
        let plans = match crate::mapping::load_all(&[PathBuf::from(&args.target)]) {
            Ok(p) => p,
            Err(report) => bail!("{}", report.render()),
        };
        match plans.into_iter().next().map(|p| p.source) {
            Some(SourcePlan::OpcUa(mut o)) => {
                o.certificate = certificate_plan(args.conn.config.as_deref())?;
                o
            }
            _ => bail!("{} is not an OPC UA tag map", args.target),
        }
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let trusted = runtime
        .block_on(crate::source::opcua::connect::trust_server(
            &plan,
            args.thumbprint.as_deref(),
        ))
        .map_err(|e| if by_url { e.for_flags() } else { e })
        .with_context(|| format!("cannot trust {}", plan.endpoint))?;
    println!(
        "trusted {}\n  subject:    {}\n  thumbprint: {}\n  file:       {}",
        plan.endpoint,
        trusted.subject,
        trusted.thumbprint,
        trusted.path.display()
    );
    Ok(())
}
