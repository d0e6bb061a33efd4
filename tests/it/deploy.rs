//! The deployment files: the systemd unit verifies offline, and the install script stages a
//! tree whose configuration `tagbridge check` accepts.

use std::path::Path;
use std::process::Command;

use super::support::{repo, tagbridge};

fn verify(unit: &Path) -> String {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .expect("systemd-analyze (package systemd) is needed; .ci/run installs it");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn systemd_unit_verifies_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    // systemd-analyze checks that ExecStart exists: point it at the binary under test.
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/tagbridge.service"))
        .unwrap()
        .replace("/usr/bin/tagbridge", env!("CARGO_BIN_EXE_tagbridge"));
    let path = dir.path().join("tagbridge.service");
    std::fs::write(&path, unit).unwrap();
    assert_eq!(verify(&path), "", "systemd-analyze verify complained");

    // The check itself can fail: a broken unit produces output.
    let broken = dir.path().join("broken.service");
    std::fs::write(
        &broken,
        "[Service]\nExecStart=/bin/true\nProtectSystem=maybe\n",
    )
    .unwrap();
    assert!(
        verify(&broken).contains("ProtectSystem") || verify(&broken).contains("protect system")
    );
}

#[test]
fn install_script_stages_a_checkable_configuration() {
    let dest = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(repo().join("deploy/install.sh"))
        .arg(env!("CARGO_BIN_EXE_tagbridge"))
        .env("DESTDIR", dest.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = dest.path();
    for file in [
        "usr/bin/tagbridge",
        "etc/systemd/system/tagbridge.service",
        "etc/tagbridge/gateway.yaml",
        "etc/tagbridge/tag-maps/press-3.yaml",
        "etc/tagbridge/credentials/eventhub",
    ] {
        assert!(root.join(file).exists(), "{file} was not installed");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("etc/tagbridge/credentials"), 0o700);
    assert_eq!(mode("etc/tagbridge/credentials/eventhub"), 0o600);

    let check = tagbridge()
        .arg("check")
        .arg("-c")
        .arg(root.join("etc/tagbridge/gateway.yaml"))
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // A second run keeps the edited configuration.
    std::fs::write(root.join("etc/tagbridge/gateway.yaml"), "# edited\n").unwrap();
    let again = Command::new("bash")
        .arg(repo().join("deploy/install.sh"))
        .arg(env!("CARGO_BIN_EXE_tagbridge"))
        .env("DESTDIR", root)
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/tagbridge/gateway.yaml")).unwrap(),
        "# edited\n"
    );
}
