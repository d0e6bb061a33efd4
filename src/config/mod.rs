//! Configuration: `gateway.yaml` and the tag maps, parsed with positions so every problem is
//! reported as `file:line:column`, all of a file's problems at once.
//!
//! Parse, then compile: this module reads files into types that mirror the YAML
//! ([`GatewayConfig`], [`TagMapFile`]); [`crate::mapping::compile()`] validates and resolves them
//! into the plan the runtime uses.

pub mod certificate;
pub mod de;
pub mod diagnostic;
pub mod duration;
pub mod events;
pub mod gateway;
pub mod plan;
pub mod schema;
pub mod state_key;
pub mod structure;
pub mod table;
pub mod tagmap;
pub mod yaml;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use diagnostic::{Diagnostic, Pos, Problem, Report};
pub use gateway::GatewayConfig;
pub use plan::GatewayPlan;
pub use tagmap::TagMapFile;

/// The largest configuration file (gateway.yaml, a tag map) the loader reads: 128 MiB, room
/// for about 1.5 million tags.
pub const MAX_FILE_BYTES: u64 = 128 << 20;

/// Reads a configuration file as text. Refuses what is not a regular file (a device such as
/// `/dev/zero` would be read forever, a FIFO would block) and files over [`MAX_FILE_BYTES`].
pub fn read_file(path: &Path) -> Result<String, Problem> {
    use std::io::Read as _;
    let at_start = Pos { line: 1, col: 1 };
    let cannot = |e: std::io::Error| Problem::new(at_start, format!("cannot read file: {e}"));
    // `metadata` follows symlinks and never opens the file, so a FIFO cannot block here.
    let meta = std::fs::metadata(path).map_err(cannot)?;
    if !meta.is_file() {
        return Err(Problem::new(
            at_start,
            format!("not a regular file ({})", file_kind(&meta)),
        )
        .with_hint("configuration files must be regular files"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large(meta.len()));
    }
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may have grown since `metadata`: never read more than the limit.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let text = String::from_utf8_lossy(valid);
        let line = text.matches('\n').count() as u32 + 1;
        let col = text.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
        Problem::new(Pos { line, col }, "the file is not UTF-8 text").with_hint("save it as UTF-8")
    })
}

fn too_large(bytes: u64) -> Problem {
    Problem::new(
        Pos { line: 1, col: 1 },
        format!("the file is {bytes} bytes, more than the {MAX_FILE_BYTES} bytes a configuration file may have"),
    )
    .with_hint("split the tag map into several files")
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

/// Reads and parses one YAML file into `T`, collecting every problem.
pub fn load_file<T: DeserializeOwned>(path: &Path) -> Result<T, Report> {
    let mut report = Report::default();
    let text = match read_file(path) {
        Ok(text) => text,
        Err(problem) => {
            report.push(problem.in_file(path));
            return Err(report);
        }
    };
    let parsed = parse_str::<T>(&text);
    report.extend(path, parsed.problems);
    match parsed.value {
        Some(value) if report.is_empty() => Ok(value),
        _ => Err(report),
    }
}

/// Parses YAML text into `T`: the value when the shape allowed one, and every problem.
pub fn parse_str<T: DeserializeOwned>(text: &str) -> de::Parsed<T> {
    match yaml::parse(text) {
        Ok((node, mut problems)) => {
            if node.is_null() {
                problems.push(Problem::new(node.pos, "the file is empty"));
                return de::Parsed {
                    value: None,
                    problems,
                    dropped: Vec::new(),
                };
            }
            let mut parsed = de::from_node::<T>(&node);
            problems.append(&mut parsed.problems);
            problems.sort_by_key(|p| p.pos);
            parsed.problems = problems;
            parsed
        }
        Err(problem) => de::Parsed {
            value: None,
            problems: vec![problem],
            dropped: Vec::new(),
        },
    }
}

/// Parses a tag map's text, at most about 1 KB of memory per tag for large files.
///
/// Equivalent to [`parse_str`], but each item of the `tags` list is deserialized as soon as
/// the YAML reader has built it, and its tree freed: the tree of a million tags and their
/// parsed form never coexist. The text is dropped once it is read.
pub fn parse_tag_map(text: String) -> de::Parsed<TagMapFile> {
    let mut tags = Vec::new();
    let mut failed = 0;
    let mut tag_problems = Vec::new();
    let mut dropped = Vec::new();
    let mut each_tag = |item: yaml::Node| {
        let one = de::from_node::<Box<de::Spanned<tagmap::TagSpec>>>(&item);
        drop(item);
        tag_problems.extend(one.problems);
        dropped.extend(one.dropped);
        match one.value {
            Some(tag) => tags.push(tag),
            None => failed += 1,
        }
    };
    let built = yaml::parse_streaming_tags(&text, &mut each_tag);
    drop(text);
    let (node, mut problems) = match built {
        Ok(parsed) => parsed,
        Err(problem) => {
            return de::Parsed {
                value: None,
                problems: vec![problem],
                dropped: Vec::new(),
            }
        }
    };
    if node.is_null() {
        problems.push(Problem::new(node.pos, "the file is empty"));
        return de::Parsed {
            value: None,
            problems,
            dropped: Vec::new(),
        };
    }
    let mut parsed = de::from_node::<TagMapFile>(&node);
    drop(node);
    if let Some(file) = parsed.value.as_mut() {
        tags.shrink_to_fit();
        file.tags = de::Items {
            items: tags,
            failed,
        };
    }
    parsed.dropped.extend(dropped);
    problems.append(&mut parsed.problems);
    problems.append(&mut tag_problems);
    problems.sort_by_key(|p| p.pos);
    problems.dedup();
    parsed.problems = problems;
    parsed
}

/// Loads `gateway.yaml`.
pub fn load_gateway(path: &Path) -> Result<GatewayConfig, Report> {
    load_file(path)
}

/// Expands tag map paths: files as given, directories to their `*.yaml` / `*.yml` files in name
/// order (so the same folder always loads in the same order). Relative paths are taken from
/// `base`.
pub fn expand_tag_map_paths<'a>(
    paths: impl IntoIterator<Item = &'a Path>,
    base: &Path,
) -> Result<Vec<PathBuf>, Report> {
    let mut files = Vec::new();
    let mut report = Report::default();
    for path in paths {
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        };
        match expand_one(&path) {
            Ok(found) => files.extend(found),
            Err(why) => report.push(Problem::new(Pos::default(), why).in_file(&path)),
        }
    }
    if report.is_empty() {
        Ok(files)
    } else {
        Err(report)
    }
}

/// One tag map path: a regular file as itself, a directory as its `*.yaml` / `*.yml` regular
/// files in name order; otherwise what is wrong with it.
pub fn expand_one(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
        _ => format!("cannot read: {e}"),
    })?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !meta.is_dir() {
        return Err(format!(
            "not a regular file or a directory ({})",
            file_kind(&meta)
        ));
    }
    let entries = std::fs::read_dir(path).map_err(|e| format!("cannot read directory: {e}"))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    found.sort();
    if found.is_empty() {
        return Err("directory holds no .yaml tag maps".to_string());
    }
    Ok(found)
}
