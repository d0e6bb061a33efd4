//! Configuration: `gateway.yaml` and the tag maps, parsed with positions so every problem is
//! reported as `file:line:column`, all of a file's problems at once.
//!
//! Parse, then compile: this module reads files into types that mirror the YAML
//! ([`GatewayConfig`], [`TagMapFile`]); [`crate::mapping::compile()`] validates and resolves them
//! into the plan the runtime uses.

pub mod de;
pub mod diagnostic;
pub mod duration;
pub mod gateway;
pub mod schema;
pub mod tagmap;
pub mod yaml;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use diagnostic::{Diagnostic, Pos, Problem, Report};
pub use gateway::GatewayConfig;
pub use tagmap::TagMapFile;

/// Reads and parses one YAML file into `T`, collecting every problem.
pub fn load_file<T: DeserializeOwned>(path: &Path) -> Result<T, Report> {
    let mut report = Report::default();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            report.push(
                Problem::new(Pos { line: 1, col: 1 }, format!("cannot read file: {e}"))
                    .in_file(path),
            );
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
        if path.is_dir() {
            match std::fs::read_dir(&path) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| {
                            p.is_file()
                                && matches!(
                                    p.extension().and_then(|e| e.to_str()),
                                    Some("yaml" | "yml")
                                )
                        })
                        .collect();
                    found.sort();
                    if found.is_empty() {
                        report.push(
                            Problem::new(Pos::default(), "directory holds no .yaml tag maps")
                                .in_file(&path),
                        );
                    }
                    files.extend(found);
                }
                Err(e) => report.push(
                    Problem::new(Pos::default(), format!("cannot read directory: {e}"))
                        .in_file(&path),
                ),
            }
        } else if path.is_file() {
            files.push(path);
        } else {
            report.push(Problem::new(Pos::default(), "no such file or directory").in_file(&path));
        }
    }
    if report.is_empty() {
        Ok(files)
    } else {
        Err(report)
    }
}
