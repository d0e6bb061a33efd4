//! Python peers (asyncua, pymodbus, azure-eventhub) in a virtualenv the tests create themselves.
//!
//! The venv lives outside the clone (`~/.cache/tagbridge/pyenv-<hash of requirements>`, or
//! `$TAGBRIDGE_PYENV`), is created once under a file lock so parallel tests share it, and is
//! rebuilt when `tests/python/requirements.txt` changes. A missing Python or a failed install
//! fails the test with pip's output: these tests never pass by skipping.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The venv's python, installing it on first use.
///
/// # Panics
/// If the venv cannot be created: the test needing it cannot run, and says why.
pub fn python() -> PathBuf {
    match PYTHON.get_or_init(ensure_venv) {
        Ok(p) => p.clone(),
        Err(e) => panic!("cannot prepare the Python test peers: {e}"),
    }
}

/// Runs `tests/python/<script>` with `args` in the venv; returns its output.
pub fn run_script(script: &str, args: &[&str]) -> Output {
    let path = super::repo().join("tests/python").join(script);
    Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()))
}

/// Like [`run_script`] on a blocking thread, for async tests whose server runs on the runtime.
pub async fn run_script_async(script: &str, args: &[&str]) -> Output {
    let script = script.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_script(&script, &args)
    })
    .await
    .expect("python runner thread panicked")
}

/// Panics with the script's output unless it exited 0.
pub fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ensure_venv() -> Result<PathBuf, String> {
    let requirements = super::repo().join("tests/python/requirements.txt");
    let text = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("{}: {e}", requirements.display()))?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    let dir = match std::env::var_os("TAGBRIDGE_PYENV") {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir);
            home.join(".cache/tagbridge")
                .join(format!("pyenv-{:016x}", hasher.finish()))
        }
    };
    let python = dir.join("bin/python");
    let done = dir.join(".installed");
    if done.exists() {
        return Ok(python);
    }
    std::fs::create_dir_all(dir.parent().unwrap_or(Path::new("/tmp")))
        .map_err(|e| e.to_string())?;
    let lock_path = dir.with_extension("lock");
    let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("lock {}: {e}", lock_path.display()))?;
    if done.exists() {
        return Ok(python);
    }
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements))?;
    std::fs::write(&done, text).map_err(|e| e.to_string())?;
    Ok(python)
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} exited {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
