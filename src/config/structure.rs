//! Field paths of OPC UA structure tags (`members:` keys, [`super::tagmap::MemberSpec`]):
//! `name`, `outer.inner`, `array[0].name`. `check` checks their syntax here; whether a field
//! exists is only known once the server's types are learned, so the run reports unknown fields
//! with the tag map's `file:line` (docs/tag-maps.md, "Structures").

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathStep {
    /// A field of a structure, by its name.
    Field(String),
    /// An element of an array, 0-based (multi-dimensional arrays: over the flattened array).
    Index(u32),
}

/// Largest array index a path may name.
pub const MAX_INDEX: u32 = 1_000_000;

/// Parses `a.b[2].c` into steps. Names are one or more characters other than `.`, `[`, `]`,
/// white space and control characters; each name may be followed by `[index]`s.
pub fn parse_path(text: &str) -> Result<Vec<PathStep>, String> {
    let mut steps = Vec::new();
    if text.is_empty() {
        return Err("the field path is empty".into());
    }
    for (n, part) in text.split('.').enumerate() {
        let name_end = part.find('[').unwrap_or(part.len());
        let name = &part[..name_end];
        if name.is_empty() {
            return Err(if n == 0 && name_end == 0 && !part.is_empty() {
                format!("`{text}` starts with an index; a path starts with a field name")
            } else {
                format!("`{text}` has an empty field name")
            });
        }
        if let Some(c) = name
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || *c == ']')
        {
            return Err(format!("`{text}`: the field name `{name}` holds {c:?}"));
        }
        steps.push(PathStep::Field(name.to_string()));
        let mut rest = &part[name_end..];
        while !rest.is_empty() {
            let Some(inner) = rest.strip_prefix('[') else {
                return Err(format!("`{text}`: expected `[` or `.` after `]`"));
            };
            let Some(close) = inner.find(']') else {
                return Err(format!("`{text}`: `[` without `]`"));
            };
            let digits = &inner[..close];
            let canonical = digits == "0" || !digits.starts_with('0');
            let index =
                if canonical && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                    digits.parse::<u32>().ok().filter(|i| *i <= MAX_INDEX)
                } else {
                    None
                };
            let Some(index) = index else {
                return Err(format!(
                    "`{text}`: `[{digits}]` is not an array index from 0 to {MAX_INDEX}"
                ));
            };
            steps.push(PathStep::Index(index));
            rest = &inner[close + 1..];
        }
    }
    Ok(steps)
}

/// The canonical text of `steps` (`a.b[2].c`), the form sensor_ids carry.
pub fn path_text(steps: &[PathStep]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            PathStep::Field(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            PathStep::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paths() {
        use PathStep::*;
        assert_eq!(parse_path("a"), Ok(vec![Field("a".into())]));
        assert_eq!(
            parse_path("stages[1].duration"),
            Ok(vec![
                Field("stages".into()),
                Index(1),
                Field("duration".into())
            ])
        );
        assert_eq!(
            parse_path("m[0][2]"),
            Ok(vec![Field("m".into()), Index(0), Index(2)])
        );
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "[0]",
            "a[",
            "a[]",
            "a[x]",
            "a[-1]",
            "a[1000001]",
            "a]",
            "a[0]b",
            "a[01]",
            "a b",
            "a\tb",
            "a[0].",
            "a[+1]",
        ] {
            assert!(parse_path(bad).is_err(), "{bad:?} parsed");
        }
    }

    proptest! {
        /// Every path that parses prints back as itself, and printing then parsing any step
        /// list gives the same steps.
        #[test]
        fn parse_and_print_agree(text in "[a-z\\[\\]0-9.]{0,12}") {
            if let Ok(steps) = parse_path(&text) {
                prop_assert_eq!(path_text(&steps), text.clone());
                prop_assert_eq!(parse_path(&path_text(&steps)), Ok(steps));
            }
        }
    }
}
