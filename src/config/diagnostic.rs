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
                cached = Some((d.file.as_path(), std::fs::read_to_string(&d.file).ok()));
            }
            out.push_str(&d.to_string());
            out.push('\n');
            let text = cached.as_ref().and_then(|(_, t)| t.as_deref());
            if let Some(line) =
                text.and_then(|t| t.lines().nth(d.pos.line.saturating_sub(1) as usize))
            {
                let gutter = d.pos.line.to_string();
                let caret_pad: String = line
                    .chars()
                    .take(d.pos.col.saturating_sub(1) as usize)
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
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
