//! Errors in configuration files, each pinned to `file:line:column`.
//!
//! A [`Diagnostic`] is one problem at one place. Loading a file collects every diagnostic it can
//! find before giving up, so an engineer fixes a whole file in one pass instead of one error per
//! run. [`Report`] renders them the way compilers do: a grep-able `file:line:col: error: …` line,
//! then the source line with a caret under the offending spot.

use std::fmt;
use std::path::{Path, PathBuf};

/// A place in a YAML document: 1-based line and column, counted in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub pos: Pos,
    /// What is wrong, naming the offending value.
    pub message: String,
    /// How to fix it, when we can tell.
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: error: {}",
            self.file.display(),
            self.pos,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// A diagnostic before the loader knows which file it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub pos: Pos,
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(pos: Pos, message: impl Into<String>) -> Self {
        Problem {
            pos,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn in_file(self, file: &Path) -> Diagnostic {
        Diagnostic {
            file: file.to_path_buf(),
            pos: self.pos,
            message: self.message,
            hint: self.hint,
        }
    }
}

/// Every problem found in a set of files, in file then position order.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct Report {
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.diagnostics.is_empty()
    }

    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    pub fn extend(&mut self, file: &Path, problems: impl IntoIterator<Item = Problem>) {
        self.diagnostics
            .extend(problems.into_iter().map(|p| p.in_file(file)));
    }

    /// Sorts by file and position and removes exact repeats.
    pub fn sort(&mut self) {
        self.diagnostics
            .sort_by(|a, b| (&a.file, a.pos).cmp(&(&b.file, b.pos)));
        self.diagnostics.dedup();
    }

    /// Renders every diagnostic with the source line and a caret, reading each file once.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut cached: Option<(&Path, Option<String>)> = None;
        for d in &self.diagnostics {
            if cached.as_ref().map(|(p, _)| *p) != Some(d.file.as_path()) {
                // Through the loader's checks: never a device, a FIFO or a huge file.
                cached = Some((d.file.as_path(), super::read_file(&d.file).ok()));
            }
            out.push_str(&d.to_string());
            out.push('\n');
            let text = cached.as_ref().and_then(|(_, t)| t.as_deref());
            if let Some(line) = text.and_then(|t| {
                yaml_lines(t)
                    .get(d.pos.line.saturating_sub(1) as usize)
                    .copied()
            }) {
                let gutter = d.pos.line.to_string();
                let caret_pad: String = line
                    .chars()
                    .take(d.pos.col.saturating_sub(1) as usize)
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                if looks_secret(line) {
                    out.push_str(&format!(
                        " {gutter} | (not shown: the line looks like a key or a connection string)\n"
                    ));
                    continue;
                }
                // A control character would reach the terminal as it is: show a placeholder.
                let line: String = line
                    .chars()
                    .map(|c| {
                        if c.is_control() && c != '\t' {
                            '\u{FFFD}'
                        } else {
                            c
                        }
                    })
                    .collect();
                out.push_str(&format!(" {gutter} | {line}\n"));
                out.push_str(&format!(" {} | {caret_pad}^\n", " ".repeat(gutter.len())));
            }
        }
        out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.diagnostics {
            writeln!(f, "{d}")?;
        }
        write!(f, "{} error(s)", self.diagnostics.len())
    }
}

/// The lines of a text as YAML counts them: a line break is `\r\n`, `\n` or a lone `\r`.
pub fn yaml_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(['\n', '\r']) {
        lines.push(&rest[..at]);
        let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[at + skip..];
    }
    lines.push(rest);
    lines
}

/// A value as messages show it: in backticks, cut after 60 characters, and not at all when it
/// looks like a secret.
pub fn shown(text: &str) -> String {
    const MAX_SHOWN_CHARS: usize = 60;
    if looks_secret(text) {
        return "a value that looks like a key or a connection string (not shown)".to_string();
    }
    let chars = text.chars().count();
    if chars > MAX_SHOWN_CHARS {
        let cut: String = text.chars().take(MAX_SHOWN_CHARS).collect();
        return format!("`{cut}…` ({chars} characters)");
    }
    format!("`{text}`")
}

/// Whether `text` may hold a secret (a connection string, a key, a password), so that it is
/// never echoed in a message: the names Azure and people use for secrets, or a long run of
/// base64 such as a pasted SAS key.
pub fn looks_secret(text: &str) -> bool {
    const MARKERS: [&str; 6] = [
        "sharedaccesskey",
        "sharedaccesssignature",
        "accountkey",
        "secret",
        "password",
        "sig=",
    ];
    let lower = text.to_ascii_lowercase();
    if MARKERS.iter().any(|m| lower.contains(m)) {
        return true;
    }
    let mut run = 0;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=') {
            run += 1;
            if run >= 32 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// The candidate closest to `input` by edit distance, if it is close enough to be a typo.
pub fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let input_lower = input.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&input_lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len().max(input.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        let keys = ["sensor_id", "scale", "offset", "deadband"];
        assert_eq!(did_you_mean("sensorid", keys), Some("sensor_id"));
        assert_eq!(did_you_mean("Scale", keys), Some("scale"));
        assert_eq!(did_you_mean("deadbnd", keys), Some("deadband"));
        assert_eq!(did_you_mean("colour", keys), None);
    }

    #[test]
    fn lines_break_where_yaml_breaks_them() {
        assert_eq!(yaml_lines("a\r\nb\rc\nd"), ["a", "b", "c", "d"]);
        assert_eq!(yaml_lines("a\n"), ["a", ""]);
    }

    #[test]
    fn secrets_are_recognised() {
        assert!(looks_secret(
            "Endpoint=sb://a/;SharedAccessKeyName=x;SharedAccessKey=abc="
        ));
        assert!(looks_secret("dGhpcyBpcyBhIHNlY3JldCBrZXkgb2YgNDQgY2hhcnM="));
        assert!(!looks_secret(
            "  - {sensor_id: press:a, node: \"ns=2;s=A\"}"
        ));
    }

    #[test]
    fn renders_line_and_caret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.yaml");
        std::fs::write(&file, "tags:\n  - sensorid: x\n").unwrap();
        let mut report = Report::default();
        report.push(Problem::new(Pos { line: 2, col: 5 }, "unknown key `sensorid`").in_file(&file));
        let text = report.render();
        let expected = format!(
            "{}:2:5: error: unknown key `sensorid`\n 2 |   - sensorid: x\n   |     ^\n",
            file.display()
        );
        assert_eq!(text, expected);
    }
}
