//! Fuzz targets for the configuration loader (YAML tree, tag maps through compile, gateway.yaml),
//! and a generator of hostile YAML. It lives in `mapping` because a tag map is only whole once
//! compiled, and `config` does not import the compiler.
//!
//! Each target takes arbitrary bytes and must never panic, hang or grow without bound; when the
//! input is refused, every problem has a position inside the input. `examples/fuzz.rs` runs the
//! targets for minutes on demand (`cargo run --release --example fuzz -- --minutes 10`); the
//! unit tests below run a few seconds of the same in `cargo test`.
//!
//! [`hostile_yaml`] writes documents a person would not: deep and wide nesting, anchors and
//! aliases (nested, undefined, recursive), odd scalars (`.nan`, `-1e999`, `0x`, `~`, control
//! characters, long strings), duplicate keys, tabs, several documents, and fragments of real
//! tag maps and gateway.yaml so the checks past the parser are reached too.

use std::path::Path;

use rand::Rng;

use crate::config::diagnostic::Problem;

/// The YAML reader alone: bytes as text, then the positioned tree.
pub fn yaml_tree(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match crate::config::yaml::parse(&text) {
        Ok((_, problems)) => assert_inside(&text, &problems),
        Err(problem) => assert_inside(&text, std::slice::from_ref(&problem)),
    }
}

/// A tag map, as `check` reads it: parse, then compile into a plan.
pub fn tag_map(data: &[u8]) {
    let text = String::from_utf8_lossy(data).into_owned();
    let parsed = crate::config::parse_tag_map(text.clone());
    assert_inside(&text, &parsed.problems);
    if let Some(file) = parsed.value {
        let (_, problems) =
            super::compile_owned(file, Path::new("/fuzz/map.yaml"), &parsed.dropped);
        assert_inside(&text, &problems);
    }
}

/// gateway.yaml, as `check -c` compiles it (paths resolved under a directory that does not
/// exist, so nothing on this machine is read).
pub fn gateway(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = crate::config::parse_str::<crate::config::GatewayConfig>(&text);
    assert_inside(&text, &parsed.problems);
    if let Some(config) = parsed.value {
        let (_, problems) =
            crate::config::plan::compile(&config, Path::new("/nonexistent-fuzz/gateway.yaml"));
        assert_inside(&text, &problems);
    }
}

/// Every problem points into the text (line 1 column 1 for an empty one).
///
/// # Panics
/// When a position is outside the text: that is the bug a fuzz target reports.
fn assert_inside(text: &str, problems: &[Problem]) {
    let lines = crate::config::diagnostic::yaml_lines(text).len() as u32;
    for p in problems {
        assert!(
            p.pos.line <= lines.max(1),
            "problem at {} past the last line {lines}: {}",
            p.pos,
            p.message
        );
        assert!(
            p.message.len() < 4096,
            "a message of {} bytes",
            p.message.len()
        );
    }
}

/// Real fragments the generator splices in, so the checks after parsing are reached.
const FRAGMENTS: &[&str] = &[
    "source:\n  opcua: {endpoint: \"opc.tcp://127.0.0.1:4840\"}\n",
    "source:\n  modbus: {tcp: \"127.0.0.1:502\", unit: 1}\n",
    "tags:\n  - {sensor_id: a, node: \"ns=2;s=A\"}\n",
    "tags:\n  - {sensor_id: b, modicon: 40001, type: float32, scale: 0.1}\n",
    "defaults: {interval: 1s, deadband: 0.5, decimals: 2}\n",
    "fields: {site: plant-a}\n",
    "tag_maps: [a.yaml, b/]\n",
    "sink:\n  eventhub: {connection_string_env: HUB, events: {array: 10}, partition_key: sensor_id}\n",
    "spool: {max_bytes: 4096, fsync: always}\n",
    "telemetry: {log_level: \"info,tagbridge=debug\", metrics: \"127.0.0.1:0\"}\n",
];

const ODD_SCALARS: &[&str] = &[
    "~",
    "null",
    "",
    ".nan",
    ".inf",
    "-.inf",
    "-1e999",
    "1e999",
    "0x1F",
    "0o17",
    "-0",
    "0.",
    "+1",
    "1_000",
    "yes",
    "no",
    "on",
    "True",
    "'quoted'",
    "\"d\\u0000q\"",
    "\"\\xff\"",
    "|\n  block\n",
    ">-\n  folded\n",
    "!!str 5",
    "!!binary aGk=",
    "!unknown x",
    "&a x",
    "*a",
    "*undefined",
    "4294967296",
    "-129",
    "65536",
    "1.7976931348623157e309",
    "ns=2;s=A",
    "opc.tcp://h:1",
    "10.0.0.1:502",
    "100ms",
    "0s",
    "1.5.5s",
    "\t",
    "- -",
    "{",
    "[",
    "]",
    "}",
    ":",
    "? k",
    "%YAML 1.2",
    "---",
    "...",
    "#",
    "\u{FEFF}",
    "\u{0}",
    "\u{7}",
    "\u{85}",
    "é",
    "\u{10FFFF}",
];

const KEYS: &[&str] = &[
    "source",
    "tags",
    "defaults",
    "fields",
    "sensor_id",
    "node",
    "modicon",
    "table",
    "address",
    "type",
    "scale",
    "offset",
    "deadband",
    "decimals",
    "interval",
    "elements",
    "tag_maps",
    "sink",
    "spool",
    "telemetry",
    "eventhub",
    "stdout",
    "fsync",
    "max_bytes",
    "metrics",
    "log_level",
    "<<",
];

/// A hostile YAML document of up to about `budget` bytes.
pub fn hostile_yaml(rng: &mut impl Rng, budget: usize) -> String {
    let mut out = String::new();
    while out.len() < budget {
        match rng.gen_range(0..10) {
            0 | 1 => out.push_str(FRAGMENTS[rng.gen_range(0..FRAGMENTS.len())]),
            2 => {
                // Deep block or flow nesting.
                let depth = rng.gen_range(1..400);
                if rng.gen_bool(0.5) {
                    out.push_str(&"- ".repeat(depth));
                    out.push_str("x\n");
                } else {
                    out.push_str(&"[".repeat(depth));
                    out.push_str(&"]".repeat(rng.gen_range(0..=depth)));
                    out.push('\n');
                }
            }
            3 => {
                // A ladder of anchors, each aliasing the one before several times.
                let levels = rng.gen_range(1..12);
                let width = rng.gen_range(1..12);
                let base = rng.gen_range(0..1000);
                out.push_str(&format!("l{base}_0: &l{base}_0 [x, y]\n"));
                for i in 1..levels {
                    let refs = vec![format!("*l{base}_{}", i - 1); width].join(", ");
                    out.push_str(&format!("l{base}_{i}: &l{base}_{i} [{refs}]\n"));
                }
            }
            4 => {
                // A wide mapping, perhaps with repeated keys.
                let n = rng.gen_range(1..300);
                out.push_str("wide:\n");
                for i in 0..n {
                    let key = if rng.gen_bool(0.1) { 0 } else { i };
                    out.push_str(&format!("  k{key}: {}\n", odd(rng)));
                }
            }
            5 => {
                let indent = " ".repeat(rng.gen_range(0..6));
                let key = KEYS[rng.gen_range(0..KEYS.len())];
                out.push_str(&format!("{indent}{key}: {}\n", odd(rng)));
            }
            6 => {
                // A tag list with odd values in every slot.
                out.push_str("tags:\n");
                for _ in 0..rng.gen_range(1..20) {
                    let key = KEYS[rng.gen_range(0..KEYS.len())];
                    out.push_str(&format!(
                        "  - {{sensor_id: {}, {key}: {}}}\n",
                        odd(rng),
                        odd(rng)
                    ));
                }
            }
            7 => {
                let n = rng.gen_range(1..4000);
                out.push_str(&format!("long: {}\n", "x".repeat(n)));
            }
            8 => {
                // Raw bytes as text (control characters included).
                let n = rng.gen_range(1..40);
                let s: String = (0..n)
                    .map(|_| char::from(rng.gen_range(0u8..128)))
                    .collect();
                out.push_str(&s);
            }
            _ => out.push_str(ODD_SCALARS[rng.gen_range(0..ODD_SCALARS.len())]),
        }
    }
    out
}

fn odd(rng: &mut impl Rng) -> &'static str {
    ODD_SCALARS[rng.gen_range(0..ODD_SCALARS.len())]
}

/// Flips, inserts, deletes and duplicates bytes of `data`, a few times.
pub fn mutate(rng: &mut impl Rng, data: &mut Vec<u8>) {
    for _ in 0..rng.gen_range(1..8) {
        if data.is_empty() {
            data.push(rng.gen());
            continue;
        }
        let at = rng.gen_range(0..data.len());
        match rng.gen_range(0..5) {
            0 => data[at] ^= 1 << rng.gen_range(0..8),
            1 => data.insert(
                at,
                *b"-:[]{}&*!|>'\"#\t\n "
                    .get(rng.gen_range(0..17))
                    .unwrap_or(&b' '),
            ),
            2 => {
                data.remove(at);
            }
            3 => {
                let end = (at + rng.gen_range(1..64)).min(data.len());
                let copy = data[at..end].to_vec();
                let to = rng.gen_range(0..=data.len());
                data.splice(to..to, copy);
            }
            _ => data.truncate(at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Generated hostile documents: no panic, no hang, every problem inside the text.
        #[test]
        fn hostile_documents_are_refused_or_read_never_crash(seed in any::<u64>()) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let doc = hostile_yaml(&mut rng, 2000);
            yaml_tree(doc.as_bytes());
            tag_map(doc.as_bytes());
            gateway(doc.as_bytes());
        }

        /// Mutated real tag maps and gateway.yaml.
        #[test]
        fn mutated_real_files_never_crash(seed in any::<u64>(), which in 0usize..4) {
            let files = [
                include_str!("../../tag-maps/press-3.yaml"),
                include_str!("../../tag-maps/line1-compressor7.yaml"),
                include_str!("../../examples/gateway.yaml"),
                include_str!("../../tests/fixtures/broken/modbus-addresses.yaml"),
            ];
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut data = files[which].as_bytes().to_vec();
            mutate(&mut rng, &mut data);
            yaml_tree(&data);
            tag_map(&data);
            gateway(&data);
        }

        /// Arbitrary bytes.
        #[test]
        fn arbitrary_bytes_never_crash(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            yaml_tree(&data);
            tag_map(&data);
            gateway(&data);
        }
    }

    #[test]
    fn the_worst_cases_are_positioned_errors() {
        let deep = "- ".repeat(100_000) + "x";
        tag_map(deep.as_bytes());
        let flow = "[".repeat(100_000);
        tag_map(flow.as_bytes());
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..30 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [{}]\n",
                vec![format!("*a{p}"); 10].join(", ")
            ));
        }
        tag_map(bomb.as_bytes());
        let wide: String = (0..200_000).map(|i| format!("k{i}: 1\n")).collect();
        gateway(wide.as_bytes());
    }
}
