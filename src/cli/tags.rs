//! `tagbridge tags export|import`: a tag map's tags as a CSV table for a spreadsheet, and a
//! table (or a Kepware tag export) back into a tag map, checked like `tagbridge check`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};

use crate::config::diagnostic::{shown, Report};
use crate::config::table::{export_rows, read_sheet, write_csv, CsvStyle, Sheet};
use crate::config::tagmap::WordOrder;
use crate::config::yaml::{self, NodeKind};
use crate::mapping::table::{import, ImportOptions};

#[derive(Debug, clap::Subcommand)]
pub enum TagsCommand {
    /// Write a tag map's tags as a CSV table: one row per tag, one column per tag key the file
    /// uses (source-level settings stay in the YAML).
    Export(ExportArgs),
    /// Replace a tag map's tags with the rows of a CSV table (or a Kepware tag export), after
    /// checking every row like `tagbridge check`. Nothing is written unless every row is valid.
    ///
    /// Exits 0 when written, 2 with every error as file.csv:line:column (column 1 = A).
    Import(ImportArgs),
}

/// The separator between cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Delimiter {
    /// `,` (the default of most spreadsheets).
    Comma,
    /// `;` (Excel where the decimal separator is a comma).
    Semicolon,
}

impl Delimiter {
    fn byte(self) -> u8 {
        match self {
            Delimiter::Comma => b',',
            Delimiter::Semicolon => b';',
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// The tag map to export.
    pub file: PathBuf,
    /// Write the table here instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// The separator between cells.
    #[arg(long, value_enum, default_value = "comma")]
    pub delimiter: Delimiter,
    /// Start the file with a UTF-8 byte order mark, so that Excel reads accents right.
    #[arg(long)]
    pub bom: bool,
}

#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["into", "new"])))]
pub struct ImportArgs {
    /// The table: a CSV file with a header row (sensor_id, tag keys, fields.NAME), or a
    /// Kepware tag export (recognised by its Tag Name and Address columns).
    pub table: PathBuf,
    /// The tag map whose tags the table replaces; everything outside `tags:` is kept.
    #[arg(long)]
    pub into: Option<PathBuf>,
    /// Write a new tag map here (with --source).
    #[arg(long, requires = "source")]
    pub new: Option<PathBuf>,
    /// With --new: the source, `opc.tcp://host:port[/path]`, `modbus://host:port` (Modbus
    /// TCP) or `rtu-over-tcp://host:port`.
    #[arg(long)]
    pub source: Option<String>,
    /// With --new and an OPC UA source: none, basic256sha256, aes128_sha256_rsaoaep,
    /// aes256_sha256_rsapss.
    #[arg(long, default_value = "basic256sha256")]
    pub security: String,
    /// The separator between cells; found on the header line when not given.
    #[arg(long, value_enum)]
    pub delimiter: Option<Delimiter>,
    /// Kepware exports: put this before every Tag Name to make the sensor_id, e.g. `press-3:`.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Kepware Modbus exports: the device's word order for 32- and 64-bit values (its Data
    /// Encoding settings; Kepware's default, First Word Low, is CDAB).
    #[arg(long, value_parser = ["ABCD", "CDAB", "BADC", "DCBA"])]
    pub word_order: Option<String>,
    /// Check only; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(command: TagsCommand) -> ExitCode {
    let result = match command {
        TagsCommand::Export(args) => export(&args),
        TagsCommand::Import(args) => import_table(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(super::EXIT_FAILURE)
        }
    }
}

fn export(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    // Only a tag map that passes `check` is exported: the table then imports back as it is.
    if let Err(report) = crate::mapping::load_all(std::slice::from_ref(&args.file)) {
        eprint!("{}", report.render());
        eprintln!(
            "{} error(s); fix them first, nothing was exported.",
            report.diagnostics.len()
        );
        return Ok(ExitCode::from(super::EXIT_INVALID));
    }
    let text = crate::config::read_file(&args.file)
        .map_err(|p| anyhow::anyhow!("{}", p.in_file(&args.file)))?;
    let (root, _) = yaml::parse(&text).map_err(|p| anyhow::anyhow!("{}", p.in_file(&args.file)))?;
    let tags = match &root.kind {
        NodeKind::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.as_scalar() == Some("tags"))
            .map(|(_, v)| v),
        _ => None,
    };
    let Some(NodeKind::Seq(tags)) = tags.map(|t| &t.kind) else {
        bail!("{}: no `tags:` list", args.file.display());
    };
    let (header, rows) = export_rows(tags).map_err(|problems| {
        let mut report = Report::default();
        report.extend(&args.file, problems);
        anyhow::anyhow!("{report}")
    })?;
    let bytes = write_csv(
        &header,
        &rows,
        CsvStyle {
            delimiter: args.delimiter.byte(),
            bom: args.bom,
        },
    );
    match &args.output {
        Some(path) => {
            write_atomically(path, &bytes)?;
            eprintln!(
                "wrote {} tags ({} columns) to {}",
                rows.len(),
                header.len(),
                path.display()
            );
        }
        None => {
            use std::io::Write as _;
            std::io::stdout()
                .write_all(&bytes)
                .context("cannot write to standard output")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn import_table(args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let csv_text = match crate::config::read_file(&args.table) {
        Ok(text) => text,
        Err(problem) => return Ok(unreadable(problem.in_file(&args.table))),
    };
    let (map_path, map_text) = match (&args.into, &args.new) {
        (Some(into), _) => match crate::config::read_file(into) {
            Ok(text) => (into.clone(), text),
            Err(problem) => return Ok(unreadable(problem.in_file(into))),
        },
        (None, Some(new)) => {
            if new.exists() {
                bail!(
                    "{} exists; use --into to replace its tags, or choose another name",
                    new.display()
                );
            }
            let source = args.source.as_deref().unwrap_or_default();
            (
                new.clone(),
                new_tag_map(source, &args.security, &args.table)?,
            )
        }
        (None, None) => bail!("name the tag map: --into FILE, or --new FILE --source …"),
    };
    let word_order = match args.word_order.as_deref() {
        None => None,
        Some("ABCD") => Some(WordOrder::ABCD),
        Some("CDAB") => Some(WordOrder::CDAB),
        Some("BADC") => Some(WordOrder::BADC),
        Some("DCBA") => Some(WordOrder::DCBA),
        Some(other) => bail!("--word-order {other}: write ABCD, CDAB, BADC or DCBA"),
    };
    let mut options = ImportOptions {
        delimiter: args.delimiter.map(Delimiter::byte),
        ..Default::default()
    };
    options.kepware.prefix = args.prefix.clone();
    options.kepware.word_order = word_order;
    let imported = match import(&args.table, &csv_text, &map_path, &map_text, &options) {
        Ok(imported) => imported,
        Err(report) => {
            let (sheet, _) = read_sheet(&csv_text, options.delimiter);
            eprint!("{}", render(&report, &args.table, &sheet));
            eprintln!(
                "{} error(s); nothing was written.",
                report.diagnostics.len()
            );
            return Ok(ExitCode::from(super::EXIT_INVALID));
        }
    };
    let from = if imported.kepware {
        " (read as a Kepware export)"
    } else {
        ""
    };
    if args.dry_run {
        eprintln!(
            "{}: {} tags are valid{from}; nothing written (--dry-run)",
            args.table.display(),
            imported.tags
        );
        return Ok(ExitCode::SUCCESS);
    }
    write_atomically(&map_path, imported.text.as_bytes())?;
    eprintln!(
        "wrote {} tags from {}{from} to {}",
        imported.tags,
        args.table.display(),
        map_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A table or tag map that cannot be read (missing, not a regular file, too large, not UTF-8)
/// is an invalid input like any other: its message as `check` prints it, exit 2.
fn unreadable(diagnostic: crate::config::Diagnostic) -> ExitCode {
    let mut report = Report::default();
    report.push(diagnostic);
    eprint!("{}", report.render());
    eprintln!("1 error(s); nothing was written.");
    ExitCode::from(super::EXIT_INVALID)
}

/// The start of a new tag map for `--source`.
fn new_tag_map(source: &str, security: &str, table: &Path) -> anyhow::Result<String> {
    let q = |s: &str| crate::config::table::emit::double_quoted(s);
    let head = format!(
        "# Written by `tagbridge tags import` from {}; `tagbridge check` validates it.\nsource:\n",
        table.display()
    );
    if source.starts_with("opc.tcp://") {
        let policies = [
            "none",
            "basic256sha256",
            "aes128_sha256_rsaoaep",
            "aes256_sha256_rsapss",
        ];
        if !policies.contains(&security) {
            bail!(
                "--security {security}: write one of {}",
                policies.join(", ")
            );
        }
        return Ok(format!(
            "{head}  opcua:\n    endpoint: {}\n    security_policy: {security}\n",
            q(source)
        ));
    }
    for (scheme, key) in [("modbus://", "tcp"), ("rtu-over-tcp://", "rtu_over_tcp")] {
        if let Some(addr) = source.strip_prefix(scheme) {
            return Ok(format!(
                "{head}  modbus:\n    {key}: {}\n",
                q(addr.trim_end_matches('/'))
            ));
        }
    }
    bail!("--source {source}: write opc.tcp://host:port, modbus://host:port or rtu-over-tcp://host:port")
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// crash leaves the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir
        .unwrap_or(Path::new("."))
        .join(format!(".{name}.tagbridge-tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}", path.display())
    })
}

/// What `tagbridge browse` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BrowseFormat {
    /// A tag map.
    Yaml,
    /// A table: sensor_id, node, enabled, and notes (#data type, #note) that import ignores.
    Csv,
}

/// The variables `browse` found as a table that `tags import` reads: the same sensor_ids as
/// [`crate::source::opcua::browse::render`] (browse paths, `~2`, `~3`… on collisions), arrays
/// and structures with `enabled` false and a note saying why.
pub fn browse_table(found: &[crate::source::opcua::browse::Found]) -> String {
    let header: Vec<String> = ["sensor_id", "node", "enabled", "#data type", "#note"]
        .map(String::from)
        .to_vec();
    let mut used: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|f| {
            let base = f.path.join("/");
            let n = used.entry(base.clone()).or_insert(0);
            *n += 1;
            let sensor_id = if *n == 1 { base } else { format!("{base}~{n}") };
            let (enabled, note) = if f.array {
                (
                    "false",
                    "an array: set `elements` to read N elements as sensor_id[i]",
                )
            } else if f.structure {
                (
                    "false",
                    "a structure: not read; point a tag at one of its fields",
                )
            } else {
                ("", "")
            };
            let array = if f.array { "[]" } else { "" };
            vec![
                sensor_id,
                f.node.to_string(),
                enabled.to_string(),
                format!("{}{array}", f.data_type),
                note.to_string(),
            ]
        })
        .collect();
    String::from_utf8(write_csv(&header, &rows, CsvStyle::default())).unwrap_or_default()
}

/// Column letters as spreadsheets name them: 1 → A, 27 → AA.
pub fn column_letters(mut col: u32) -> String {
    let mut out = Vec::new();
    while col > 0 {
        let rem = (col - 1) % 26;
        out.push(b'A' + rem as u8);
        col = (col - 1) / 26;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// The report, each problem in the table followed by the cell it is about (its column letter,
/// the header's name, the cell's text); problems in the tag map as `check` shows them.
fn render(report: &Report, table: &Path, sheet: &Sheet) -> String {
    let mut out = String::new();
    for d in &report.diagnostics {
        if d.file != table {
            let one = Report {
                diagnostics: vec![d.clone()],
            };
            out.push_str(&one.render());
            continue;
        }
        out.push_str(&format!("{d}\n"));
        let cell = if d.pos.line == sheet.header.first().map_or(1, |c| c.pos.line) {
            sheet.header.get(d.pos.col.saturating_sub(1) as usize)
        } else {
            sheet
                .rows
                .iter()
                .find(|r| r.first().is_some_and(|c| c.pos.line == d.pos.line))
                .and_then(|r| r.get(d.pos.col.saturating_sub(1) as usize))
        };
        let Some(cell) = cell else { continue };
        let gutter = d.pos.line.to_string();
        let name = sheet
            .header
            .get(d.pos.col.saturating_sub(1) as usize)
            .map_or(String::new(), |h| h.text.clone());
        let text: String = shown(&cell.text)
            .chars()
            .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
            .collect();
        out.push_str(&format!(
            " {gutter} | column {} ({}): {text}\n",
            column_letters(d.pos.col),
            shown(&name)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browse_tables_name_tags_as_browse_tag_maps_do_and_import_back() {
        use crate::source::opcua::browse::{render, Found};
        let found: Vec<Found> = [
            (vec!["Line1", "Temp"], "ns=2;s=Line1/Temp", false, false),
            (vec!["Line1", "Temp"], "ns=2;s=Line1/Temp2", false, false),
            (vec!["Line1", "Arr, \"x\""], "ns=2;i=7", true, false),
            (vec!["Line1", "Struct"], "ns=2;i=8", false, true),
        ]
        .into_iter()
        .map(|(path, node, array, structure)| Found {
            path: path.into_iter().map(String::from).collect(),
            node: node.parse().unwrap(),
            data_type: "Double".into(),
            array,
            structure,
            fields: None,
        })
        .collect();
        let table = browse_table(&found);
        let small = "source: {opcua: {endpoint: \"opc.tcp://127.0.0.1:4840\", security_policy: none}}\ntags: [{sensor_id: a, node: \"ns=2;s=A\"}]\n";
        let parsed = crate::config::parse_tag_map(small.to_string());
        let (small, _) =
            crate::mapping::compile_owned(parsed.value.unwrap(), Path::new("s.yaml"), &[]);
        let crate::mapping::SourcePlan::OpcUa(plan) = small.source else {
            panic!("not OPC UA")
        };
        let yaml = render(
            &plan,
            &opcua::types::ObjectId::ObjectsFolder.into(),
            &found,
            "browse",
        );
        let map = Path::new("browsed.yaml");
        let from_yaml = crate::mapping::compile_owned(
            crate::config::parse_tag_map(yaml.clone()).value.unwrap(),
            map,
            &[],
        );
        let imported = import(
            Path::new("b.csv"),
            &table,
            map,
            &yaml,
            &ImportOptions::default(),
        )
        .unwrap_or_else(|r| panic!("{r}\n{table}"));
        let parsed = crate::config::parse_tag_map(imported.text);
        let from_csv = crate::mapping::compile_owned(parsed.value.unwrap(), map, &[]);
        assert!(from_yaml.1.is_empty() && from_csv.1.is_empty());
        let ids = |plan: &crate::mapping::TagMapPlan| -> Vec<String> {
            plan.tags.iter().map(|t| t.sensor_id.to_string()).collect()
        };
        assert_eq!(ids(&from_csv.0), ids(&from_yaml.0));
        assert_eq!(ids(&from_csv.0), ["Line1/Temp", "Line1/Temp~2"]);
        assert_eq!(from_csv.0.disabled, 2);
    }

    #[test]
    fn columns_are_lettered_like_spreadsheets() {
        let letters: Vec<String> = [1, 4, 26, 27, 52, 53, 702, 703]
            .into_iter()
            .map(column_letters)
            .collect();
        assert_eq!(letters, ["A", "D", "Z", "AA", "AZ", "BA", "ZZ", "AAA"]);
    }
}
