//! The documentation cannot point at things that do not exist: every relative link in the
//! README, ARCHITECTURE.md and docs/ resolves, and every `src/…` or `tests/…` path that
//! ARCHITECTURE.md names is in the tree.

use std::path::{Path, PathBuf};

use super::support::repo;

fn markdown_files() -> Vec<PathBuf> {
    let root = repo();
    let mut files = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// Targets of `[text](target)` links, without `#anchors`; external links are skipped.
fn relative_links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = &rest[..end];
        let path = target.split('#').next().unwrap_or_default();
        if !path.is_empty() && !path.contains("://") && !path.starts_with("mailto:") {
            links.push(path.to_string());
        }
    }
    links
}

/// Backticked words that look like paths into the tree: `src/…`, `tests/…`, `examples/…`.
fn named_paths(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| {
            ["src/", "tests/", "examples/", "deploy/", "schema/"]
                .iter()
                .any(|p| w.starts_with(p))
                && !w.contains(' ')
                && !w.contains('*')
        })
        .map(|w| w.trim_end_matches([',', '.', ':']).to_string())
        .collect()
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let dir = file.parent().unwrap_or(Path::new("."));
        for link in relative_links(&text) {
            if !dir.join(&link).exists() {
                broken.push(format!("{}: {link}", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_path_architecture_names_exists() {
    let root = repo();
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let names = named_paths(&text);
    assert!(names.len() > 10, "the map names the files it points at");
    let missing: Vec<&String> = names.iter().filter(|p| !root.join(p).exists()).collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that are not in the tree: {missing:?}"
    );
}

#[test]
fn the_checks_catch_a_broken_link_and_a_missing_path() {
    assert_eq!(
        relative_links("see [a](docs/a.md#x), [b](https://x.y/) and [c](../c.md)"),
        vec!["docs/a.md", "../c.md"]
    );
    assert_eq!(
        named_paths("open `src/lib.rs`, not `cargo test` or `src/*.rs`"),
        vec!["src/lib.rs"]
    );
}
