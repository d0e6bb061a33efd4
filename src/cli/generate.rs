//! `tagbridge generate`: files derived from the clap definitions for packagers (hidden).
//!
//! The Debian package (`deploy/deb/build.sh`) runs the binary it packages to write a man page
//! per command (`tagbridge.1`, `tagbridge-run.1`, ...) and the bash, zsh and fish completions,
//! so they can never describe another version's flags. Also the version line printed by
//! `tagbridge --version`: the crate version and the git commit the build script found.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Subcommand};

/// `tagbridge --version`: `0.1.0 (commit 1a2b3c4d5e6f)`; `unknown` when built without git
/// (see build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TAGBRIDGE_COMMIT"),
    ")"
);

#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Man pages in roff, one per command, into DIR (section 1).
    Man {
        /// Directory to write the pages into (created if missing).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Shell completions into DIR: `tagbridge.bash`, `_tagbridge` (zsh), `tagbridge.fish`.
    Completions {
        /// Directory to write the scripts into (created if missing).
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Runs `tagbridge generate ...`; prints each file written.
pub fn run(command: GenerateCommand) -> ExitCode {
    let result = match command {
        GenerateCommand::Man { dir } => man(&dir),
        GenerateCommand::Completions { dir } => completions(&dir),
    };
    match result {
        Ok(written) => {
            for path in written {
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(super::EXIT_FAILURE)
        }
    }
}

fn man(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(super::Cli::command(), dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    let mut written: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    written.sort();
    Ok(written)
}

fn completions(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    use anyhow::Context;
    use clap_complete::Shell;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = visible_command();
        let path = clap_complete::generate_to(shell, &mut cmd, "tagbridge", dir)
            .with_context(|| format!("cannot write {shell} completions into {}", dir.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// The command line without its hidden commands: clap_complete would offer them.
fn visible_command() -> clap::Command {
    let full = super::Cli::command();
    let visible: Vec<clap::Command> = full
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .cloned()
        .collect();
    let mut cmd = clap::Command::new("tagbridge")
        .args(full.get_arguments().cloned())
        .subcommands(visible)
        .propagate_version(true)
        .version(VERSION);
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_the_crate_version_and_a_commit() {
        assert!(VERSION.starts_with(concat!(env!("CARGO_PKG_VERSION"), " (commit ")));
        assert!(VERSION.ends_with(')'));
        assert!(!env!("TAGBRIDGE_COMMIT").is_empty());
    }

    #[test]
    fn writes_a_man_page_per_visible_command_and_three_completions() {
        let dir = tempfile::tempdir().unwrap();
        let pages = man(dir.path()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        assert!(names.contains(&"tagbridge.1".to_owned()), "{names:?}");
        assert!(names.contains(&"tagbridge-run.1".to_owned()), "{names:?}");
        assert!(
            names.contains(&"tagbridge-sim-plc.1".to_owned()),
            "{names:?}"
        );
        // The packagers' command stays out of the user's manual.
        assert!(!names.iter().any(|n| n.contains("generate")), "{names:?}");
        let page = std::fs::read_to_string(dir.path().join("tagbridge.1")).unwrap();
        assert!(page.contains(".TH tagbridge 1"), "{page}");

        let scripts = completions(dir.path()).unwrap();
        assert_eq!(scripts.len(), 3);
        let bash = std::fs::read_to_string(dir.path().join("tagbridge.bash")).unwrap();
        assert!(bash.contains("send-test"), "{bash}");
        assert!(
            !bash.contains("subcmd__generate"),
            "hidden command completed"
        );
        for name in ["_tagbridge", "tagbridge.fish"] {
            let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
            assert!(text.contains("send-test"), "{text}");
            // Its description, which zsh and fish show.
            assert!(!text.contains("for packagers"), "hidden command in {name}");
        }
    }
}
