//! Build script: the git commit `tagbridge --version` prints.
//!
//! Sets `TAGBRIDGE_COMMIT` for the crate to one of, in order:
//! 1. the `TAGBRIDGE_COMMIT` environment variable, for builds from a source tarball whose
//!    packager knows the commit (`TAGBRIDGE_COMMIT=1a2b3c4 cargo build --release`);
//! 2. `git rev-parse --short=12 HEAD` when the source is a git checkout (a clone or a worktree)
//!    and `git` is installed;
//! 3. `unknown` otherwise (a tarball without `.git`): the build never fails for want of git.
//!
//! The script runs again when HEAD moves (a commit, a checkout) or the branch ref changes, and
//! not on every build: uncommitted edits are therefore not flagged in the version.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=TAGBRIDGE_COMMIT");
    let commit = match std::env::var("TAGBRIDGE_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_owned(),
        _ => from_git().unwrap_or_else(|| "unknown".to_owned()),
    };
    println!("cargo:rustc-env=TAGBRIDGE_COMMIT={commit}");
}

/// The short commit of HEAD, registering the files whose change moves it; `None` when this is
/// not a git checkout or git is missing.
fn from_git() -> Option<String> {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    // Only the repository the crate itself lives in: a tarball unpacked inside some other
    // repository must not report that repository's commit.
    let toplevel = git(&manifest, &["rev-parse", "--show-toplevel"])?;
    if Path::new(&toplevel).canonicalize().ok()? != manifest.canonicalize().ok()? {
        return None;
    }
    // A worktree has its own HEAD (git-dir) but shares refs (common dir).
    for (arg, files) in [
        ("--git-dir", &["HEAD"][..]),
        ("--git-common-dir", &["packed-refs"][..]),
    ] {
        if let Some(dir) = git(&manifest, &["rev-parse", arg]) {
            let dir = manifest.join(dir);
            for file in files {
                watch(&dir.join(file));
            }
        }
    }
    if let Some(branch) = git(&manifest, &["symbolic-ref", "-q", "HEAD"]) {
        if let Some(common) = git(&manifest, &["rev-parse", "--git-common-dir"]) {
            watch(&manifest.join(common).join(branch));
        }
    }
    git(&manifest, &["rev-parse", "--short=12", "HEAD"])
}

/// Reruns the script when `path` changes. Only existing files: cargo reruns a script on every
/// build while a watched path is missing (packed refs have no loose file).
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// Runs git in `dir`; its trimmed standard output when it succeeds with some.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}
