//! `tagbridge browse opc.tcp://…`: walk a server's address space and write a tag map
//! skeleton that `tagbridge check` accepts unchanged.

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{bail, Context as _};
use opcua::types::{NodeId, ObjectId};

use super::opcua::ConnArgs;
use crate::source::opcua::browse;

/// Write a tag map for the variables of an OPC UA server.
#[derive(Debug, clap::Args)]
pub struct BrowseArgs {
    /// The server, e.g. opc.tcp://10.0.0.5:4840
    pub endpoint: String,
    /// Start here instead of the Objects folder, e.g. `ns=2;s=Line1`.
    #[arg(long)]
    pub root: Option<String>,
    /// How many folder levels to descend.
    #[arg(long, default_value_t = 10)]
    pub depth: usize,
    /// Write the tag map here instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// `yaml`: a tag map; `csv`: a table to curate in a spreadsheet, then `tagbridge tags
    /// import --new … --source <endpoint>`.
    #[arg(long, value_enum, default_value = "yaml")]
    pub format: super::tags::BrowseFormat,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub fn run(args: BrowseArgs) -> ExitCode {
    match browse_to_file(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(super::EXIT_FAILURE)
        }
    }
}

fn browse_to_file(args: &BrowseArgs) -> anyhow::Result<()> {
    let plan = args.conn.plan(&args.endpoint)?;
    let root = match &args.root {
        Some(text) => NodeId::from_str(text.trim())
            .map_err(|_| anyhow::anyhow!("--root `{text}` is not an OPC UA node id"))?,
        None => ObjectId::ObjectsFolder.into(),
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let (found, notifiers) = runtime
        .block_on(browse::browse_server(&plan, &root, args.depth))
        .map_err(|e| e.for_flags())
        .with_context(|| format!("cannot browse {}", args.endpoint))?;
    if found.is_empty() {
        bail!(
            "no variables below {root} (outside namespace 0) within {} levels",
            args.depth
        );
    }
    let command: Vec<String> = std::env::args().collect();
    let mut command = command.join(" ");
    if let Some(first) = command.split(' ').next() {
        if let Some(name) = std::path::Path::new(first).file_name() {
            command = format!("{}{}", name.to_string_lossy(), &command[first.len()..]);
        }
    }
    let text = match args.format {
        super::tags::BrowseFormat::Yaml => {
            let mut text = browse::render(&plan, &root, &found, &command);
            text.push_str(&crate::source::opcua::notifiers::render(&notifiers));
            text
        }
        super::tags::BrowseFormat::Csv => super::tags::browse_table(&found),
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {} tags to {}", found.len(), path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}
