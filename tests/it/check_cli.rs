//! `tagbridge check` and `tagbridge schema` as an engineer runs them.

use super::support::tagbridge;

#[test]
fn committed_schemas_match_the_code() {
    let out = tagbridge()
        .args(["schema", "--check", "--dir", "schema"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "schema/ drifted from the Rust types; run `cargo run -- schema`:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
