//! Kepware (KEPServerEX, Kepware Edge) CSV tag exports, read as table rows.
//!
//! The export of one device or tag group has one header row with Kepware's columns (Tag Name,
//! Address, Data Type, Respect Data Type, Client Access, Scan Rate, Scaling, Raw Low, Raw
//! High, Scaled Low, Scaled High, Scaled Data Type, Clamp Low, Clamp High, Eng Units,
//! Description, Negate Value) and one row per tag. Each row becomes the tag-map keys that mean
//! the same, each placed at the Kepware cell it came from, then goes through the same checks
//! as any table row:
//!
//! | Kepware | tag map |
//! |---|---|
//! | Tag Name | `sensor_id` (after an optional prefix) |
//! | Address `400001`, `40001`, `300001`, `100001`, `000001` | `modicon` (Modbus channels) |
//! | Address `400001.5` | `modicon` + `bit: 5`, type bool |
//! | Address `400001.20H` (a string of 20 bytes, high byte first) | `modicon`, `type: string`, `length: 10` |
//! | Address `ns=2;s=…` | `node` (OPC UA channels) |
//! | Data Type Boolean, Short, Word, Long, DWord, LLong, QWord, Float, Double, String | `type` bool, int16, uint16, int32, uint32, int64, uint64, float32, float64, string |
//! | Scan Rate (ms) | `interval` |
//! | Scaling Linear (Raw Low/High → Scaled Low/High), Negate Value | `scale`, `offset` |
//! | Eng Units, Description | `fields.unit`, `fields.description` |
//!
//! What has no equivalent is a problem on that row, never an approximation: write-only tags,
//! square-root scaling, clamping, integer scaled types, BCD, Char, Byte, Date and arrays,
//! strings stored low byte first, an odd string length. Kepware keeps the word order of 32-
//! and 64-bit values in the device's settings, not in the tag export, so it must be given
//! (`--word-order`, or `order` in the tag map's `defaults`).

use crate::config::diagnostic::{did_you_mean, shown, Pos, Problem};
use crate::config::tagmap::WordOrder;

use super::emit::double_quoted;
use super::rows::{tag_row, Column, TagRow};
use super::sheet::{Cell, Sheet};

/// Kepware's columns, as its exports name them.
pub const COLUMNS: [&str; 17] = [
    "Tag Name",
    "Address",
    "Data Type",
    "Respect Data Type",
    "Client Access",
    "Scan Rate",
    "Scaling",
    "Raw Low",
    "Raw High",
    "Scaled Low",
    "Scaled High",
    "Scaled Data Type",
    "Clamp Low",
    "Clamp High",
    "Eng Units",
    "Description",
    "Negate Value",
];

/// Kepware data types and the tagbridge type each reads as (`None`: no equivalent).
const DATA_TYPES: [(&str, Option<&str>); 16] = [
    ("Default", None),
    ("Boolean", Some("bool")),
    ("Short", Some("int16")),
    ("Word", Some("uint16")),
    ("Long", Some("int32")),
    ("DWord", Some("uint32")),
    ("LLong", Some("int64")),
    ("QWord", Some("uint64")),
    ("Float", Some("float32")),
    ("Double", Some("float64")),
    ("String", Some("string")),
    ("Char", None),
    ("Byte", None),
    ("BCD", None),
    ("LBCD", None),
    ("Date", None),
];

/// How to read an export.
#[derive(Debug, Clone, Default)]
pub struct KepwareOptions {
    /// The channel is Modbus (addresses are register references); otherwise OPC UA (node ids).
    pub modbus: bool,
    /// Put before every Tag Name to make the sensor_id, e.g. `press-3:`.
    pub prefix: String,
    /// The device's word order for 32- and 64-bit values (Kepware's "First Word Low" setting).
    pub word_order: Option<WordOrder>,
    /// The tag map's `defaults` set `order`, so rows need none.
    pub defaults_have_order: bool,
}

/// Whether a header looks like a Kepware export (its first columns are Tag Name, Address).
pub fn looks_like_kepware(sheet: &Sheet) -> bool {
    let names: Vec<String> = sheet.header.iter().map(|c| norm(&c.text)).collect();
    names.contains(&norm("Tag Name")) && names.contains(&norm("Address"))
}

fn norm(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The rows of a Kepware export as tags, and every row it cannot map.
pub fn rows_from_kepware(sheet: &Sheet, options: &KepwareOptions) -> (Vec<TagRow>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut index: Vec<Option<usize>> = Vec::with_capacity(sheet.header.len());
    for cell in &sheet.header {
        let found = COLUMNS.iter().position(|c| norm(c) == norm(&cell.text));
        if found.is_none() && !cell.text.trim().is_empty() {
            let hint = match did_you_mean(cell.text.trim(), COLUMNS) {
                Some(c) => format!("did you mean `{c}`?"),
                None => format!("Kepware's columns are: {}", COLUMNS.join(", ")),
            };
            problems.push(
                Problem::new(
                    cell.pos,
                    format!("unknown Kepware column {}", shown(cell.text.trim())),
                )
                .with_hint(hint),
            );
        }
        index.push(found);
    }
    for required in ["Tag Name", "Address"] {
        let at = COLUMNS.iter().position(|c| *c == required);
        if !index.contains(&at) {
            problems.push(Problem::new(
                Pos { line: 1, col: 1 },
                format!("the header has no `{required}` column"),
            ));
        }
    }
    if !problems.is_empty() {
        return (Vec::new(), problems);
    }
    let mut rows = Vec::with_capacity(sheet.rows.len());
    let mut order_missing: Vec<Pos> = Vec::new();
    for cells in &sheet.rows {
        let get = |name: &str| {
            let at = COLUMNS.iter().position(|c| *c == name);
            index
                .iter()
                .position(|i| *i == at && at.is_some())
                .and_then(|i| cells.get(i))
                .filter(|c| !c.text.trim().is_empty())
        };
        let row = Row {
            get: &get,
            options,
            out: Vec::new(),
            problems: Vec::new(),
            needs_order: None,
        };
        let (out, mut row_problems, needs_order) = row.map();
        if let Some(pos) = needs_order {
            order_missing.push(pos);
        }
        if !row_problems.is_empty() || needs_order.is_some() {
            problems.append(&mut row_problems);
            continue;
        }
        let at = cells.first().map_or(Pos::default(), |c| c.pos);
        let (tag, mut more) = tag_row(at, out.iter().map(|(c, cell)| (c, cell)));
        problems.append(&mut more);
        rows.extend(tag);
    }
    if let Some(first) = order_missing.first() {
        let more = match order_missing.len() {
            1 => String::new(),
            n => format!(" (and {} more rows)", n - 1),
        };
        problems.push(
            Problem::new(
                *first,
                format!("this 32- or 64-bit value needs the device's word order{more}"),
            )
            .with_hint("Kepware keeps it in the device's Data Encoding settings, not in the tag export: pass --word-order CDAB for its default (First Word Low) or --word-order ABCD, or set `order` in the tag map's defaults"),
        );
    }
    (rows, problems)
}

/// One Kepware row being mapped.
struct Row<'a, F: Fn(&str) -> Option<&'a Cell>> {
    get: &'a F,
    options: &'a KepwareOptions,
    out: Vec<(Column, Cell)>,
    problems: Vec<Problem>,
    needs_order: Option<Pos>,
}

impl<'a, F: Fn(&str) -> Option<&'a Cell>> Row<'a, F> {
    fn put(&mut self, key: &'static str, pos: Pos, text: impl Into<String>) {
        self.out.push((
            Column::Key(key),
            Cell {
                pos,
                text: text.into(),
            },
        ));
    }

    fn field(&mut self, name: &str, cell: &Cell) {
        self.out.push((
            Column::Field(name.to_string()),
            Cell {
                pos: cell.pos,
                text: double_quoted(&cell.text),
            },
        ));
    }

    fn cannot(&mut self, cell: &Cell, message: String, hint: &str) {
        self.problems
            .push(Problem::new(cell.pos, message).with_hint(hint.to_string()));
    }

    fn flag(&mut self, name: &str) -> bool {
        match (self.get)(name) {
            None => false,
            Some(c) => match c.text.trim().to_ascii_lowercase().as_str() {
                "0" | "false" | "no" => false,
                "1" | "true" | "yes" => true,
                _ => {
                    self.cannot(
                        c,
                        format!("{name} {} is not 1 or 0", shown(&c.text)),
                        "Kepware writes 1 (on) or 0 (off)",
                    );
                    false
                }
            },
        }
    }

    fn number(&mut self, name: &str) -> Option<f64> {
        let cell = (self.get)(name)?;
        match cell.text.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => Some(v),
            _ => {
                self.cannot(
                    cell,
                    format!("{name} {} is not a number", shown(&cell.text)),
                    "write a decimal number with a point, e.g. 4095 or 0.5",
                );
                None
            }
        }
    }

    fn map(mut self) -> (Vec<(Column, Cell)>, Vec<Problem>, Option<Pos>) {
        let Some(name) = (self.get)("Tag Name") else {
            let at = (self.get)("Address").map_or(Pos::default(), |c| c.pos);
            self.problems.push(Problem::new(
                Pos {
                    line: at.line,
                    col: 1,
                },
                "this row has no Tag Name",
            ));
            return (self.out, self.problems, None);
        };
        let sensor_id = format!("{}{}", self.options.prefix, name.text);
        self.put("sensor_id", name.pos, sensor_id);
        if let Some(access) = (self.get)("Client Access") {
            let a = norm(&access.text);
            if a == "wo" || a == "writeonly" {
                self.cannot(
                    access,
                    "a write-only tag cannot be read".into(),
                    "the gateway only reads; leave this tag out",
                );
            } else if !matches!(a.as_str(), "ro" | "rw" | "readonly" | "readwrite") {
                self.cannot(
                    access,
                    format!("Client Access {} is not RO, RW or WO", shown(&access.text)),
                    "Kepware writes RO, R/W or WO",
                );
            }
        }
        let data_type = self.data_type();
        match (self.get)("Address") {
            None => self.problems.push(Problem::new(
                Pos {
                    line: name.pos.line,
                    col: 1,
                },
                "this row has no Address",
            )),
            Some(address) if self.options.modbus => self.modbus_address(address, data_type),
            Some(address) => self.put("node", address.pos, address.text.trim()),
        }
        if let Some(rate) = (self.get)("Scan Rate") {
            match rate.text.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => self.put("interval", rate.pos, format!("{ms}ms")),
                _ => self.cannot(
                    rate,
                    format!(
                        "Scan Rate {} is not a number of milliseconds",
                        shown(&rate.text)
                    ),
                    "Kepware writes the scan rate in milliseconds, e.g. 1000",
                ),
            }
        }
        self.scaling();
        if let Some(units) = (self.get)("Eng Units") {
            self.field("unit", units);
        }
        if let Some(description) = (self.get)("Description") {
            self.field("description", description);
        }
        (self.out, self.problems, self.needs_order)
    }

    /// The row's Data Type: the tagbridge type (`None` for Default), after reporting what has
    /// no equivalent.
    fn data_type(&mut self) -> Option<(&'static str, Pos)> {
        let cell = (self.get)("Data Type")?;
        let text = cell.text.trim();
        if text.to_ascii_lowercase().ends_with(" array") {
            self.cannot(
                cell,
                format!("Kepware type {} is an array", shown(text)),
                "make one tag per element",
            );
            return None;
        }
        let Some((kepware, ours)) = DATA_TYPES
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(text))
        else {
            let hint = match did_you_mean(text, DATA_TYPES.iter().map(|(k, _)| *k)) {
                Some(k) => format!("did you mean `{k}`?"),
                None => "Kepware's types are Boolean, Short, Word, Long, DWord, LLong, QWord, Float, Double, String".to_string(),
            };
            self.cannot(cell, format!("unknown Kepware type {}", shown(text)), &hint);
            return None;
        };
        if !self.options.modbus {
            // An OPC UA server says what type a node holds: Kepware's is not needed.
            return None;
        }
        match ours {
            Some(t) => Some((t, cell.pos)),
            None if *kepware == "Default" => None,
            None => {
                self.cannot(
                    cell,
                    format!("Kepware type `{kepware}` has no tagbridge equivalent"),
                    "tagbridge reads bool, int16, uint16, int32, uint32, int64, uint64, float32, float64 and string",
                );
                None
            }
        }
    }

    fn modbus_address(&mut self, cell: &Cell, data_type: Option<(&'static str, Pos)>) {
        let text = cell.text.trim();
        let (reference, suffix) = match text.split_once('.') {
            Some((r, s)) => (r, Some(s)),
            None => (text, None),
        };
        let digits_ok = matches!(reference.len(), 5 | 6)
            && reference.bytes().all(|b| b.is_ascii_digit())
            && matches!(reference.as_bytes()[0], b'0' | b'1' | b'3' | b'4');
        if !digits_ok {
            let hint = if text.contains('[') {
                "arrays have no tagbridge equivalent: make one tag per element"
            } else {
                "tagbridge reads Modbus references 000001, 100001, 300001, 400001 (or 5 digits), with .bit or .lengthH"
            };
            self.cannot(
                cell,
                format!(
                    "Kepware address {} is not a Modbus reference tagbridge reads",
                    shown(text)
                ),
                hint,
            );
            return;
        }
        self.put("modicon", cell.pos, reference);
        let register = matches!(reference.as_bytes()[0], b'3' | b'4');
        match suffix {
            None => {
                if let Some((t, pos)) = data_type {
                    self.put("type", pos, t);
                    if matches!(
                        t,
                        "int32" | "uint32" | "float32" | "int64" | "uint64" | "float64"
                    ) {
                        self.order(pos);
                    }
                }
            }
            Some(s) if s.ends_with(['H', 'h', 'L', 'l']) => {
                let (len, end) = s.split_at(s.len() - 1);
                let Ok(bytes) = len.parse::<u16>() else {
                    return self.cannot(
                        cell,
                        format!("Kepware address {} has no string length", shown(text)),
                        "write it as 400001.20H: a string of 20 bytes",
                    );
                };
                if end.eq_ignore_ascii_case("l") {
                    return self.cannot(
                        cell,
                        format!(
                            "Kepware address {} stores the string low byte first",
                            shown(text)
                        ),
                        "tagbridge reads strings high byte first (H)",
                    );
                }
                if bytes == 0 || bytes % 2 == 1 || !register {
                    return self.cannot(cell, format!("Kepware address {} is not a string tagbridge reads", shown(text)), "tagbridge reads strings of an even number of bytes from registers, two per register");
                }
                if data_type.is_some_and(|(t, _)| t != "string") {
                    return self.cannot(cell, format!("Kepware address {} is a string address, and the Data Type is not String", shown(text)), "set Data Type to String");
                }
                self.put("type", cell.pos, "string");
                self.put("length", cell.pos, (bytes / 2).to_string());
            }
            Some(bit) => {
                if data_type.is_some_and(|(t, _)| t != "bool") {
                    return self.cannot(
                        cell,
                        format!(
                            "Kepware address {} reads one bit, and the Data Type is not Boolean",
                            shown(text)
                        ),
                        "set Data Type to Boolean",
                    );
                }
                self.put("type", cell.pos, "bool");
                self.put("bit", cell.pos, bit);
            }
        }
    }

    fn order(&mut self, pos: Pos) {
        match self.options.word_order {
            Some(order) => {
                let name = match order {
                    WordOrder::ABCD => "ABCD",
                    WordOrder::CDAB => "CDAB",
                    WordOrder::BADC => "BADC",
                    WordOrder::DCBA => "DCBA",
                };
                self.put("order", pos, name);
            }
            None if self.options.defaults_have_order => {}
            None => self.needs_order = Some(pos),
        }
    }

    fn scaling(&mut self) {
        let Some(cell) = (self.get)("Scaling") else {
            return;
        };
        match norm(&cell.text).as_str() {
            "none" | "" => return,
            "linear" => {}
            _ => {
                let hint =
                    "tagbridge scales linearly (scale and offset); apply this scaling downstream";
                return self.cannot(
                    cell,
                    format!("Scaling {} has no tagbridge equivalent", shown(&cell.text)),
                    hint,
                );
            }
        }
        let at = cell.clone();
        for clamp in ["Clamp Low", "Clamp High"] {
            if self.flag(clamp) {
                if let Some(c) = (self.get)(clamp) {
                    self.cannot(
                        c,
                        format!("{clamp} has no tagbridge equivalent"),
                        "tagbridge does not clamp values; clamp them downstream, or set it to 0",
                    );
                }
            }
        }
        if let Some(c) = (self.get)("Scaled Data Type") {
            let t = c.text.trim();
            if !(t.eq_ignore_ascii_case("double") || t.eq_ignore_ascii_case("float")) {
                self.cannot(c, format!("Scaled Data Type {} would round the scaled values", shown(t)), "tagbridge sends scaled values as decimal numbers: set Scaled Data Type to Double (add `decimals: 0` after the import to round)");
            }
        }
        let values = [
            self.number("Raw Low"),
            self.number("Raw High"),
            self.number("Scaled Low"),
            self.number("Scaled High"),
        ];
        let [Some(rl), Some(rh), Some(sl), Some(sh)] = values else {
            if self.problems.is_empty() {
                self.cannot(
                    &at,
                    "Linear scaling needs Raw Low, Raw High, Scaled Low and Scaled High".into(),
                    "fill in all four",
                );
            }
            return;
        };
        if rh == rl {
            return self.cannot(
                &at,
                format!("Linear scaling with Raw Low = Raw High ({rl}) has no slope"),
                "make Raw High differ from Raw Low",
            );
        }
        let mut scale = (sh - sl) / (rh - rl);
        let mut offset = sl - rl * scale;
        if self.flag("Negate Value") {
            scale = -scale;
            offset = -offset;
        }
        if scale != 1.0 || offset != 0.0 {
            self.put("scale", at.pos, format!("{scale:?}"));
        }
        if offset != 0.0 {
            self.put("offset", at.pos, format!("{offset:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::table::read_sheet;
    use crate::config::table::rows::reading;

    fn run(csv: &str, options: &KepwareOptions) -> (Vec<serde_json::Value>, Vec<String>) {
        let (sheet, problems) = read_sheet(csv, None);
        assert!(problems.is_empty(), "{problems:?}");
        let (rows, problems) = rows_from_kepware(&sheet, options);
        (
            rows.iter().map(|r| reading(&r.node)).collect(),
            problems
                .iter()
                .map(|p| format!("{}: {}", p.pos, p.message))
                .collect(),
        )
    }

    const HEADER: &str = "\"Tag Name\",\"Address\",\"Data Type\",\"Respect Data Type\",\"Client Access\",\"Scan Rate\",\"Scaling\",\"Raw Low\",\"Raw High\",\"Scaled Low\",\"Scaled High\",\"Scaled Data Type\",\"Clamp Low\",\"Clamp High\",\"Eng Units\",\"Description\",\"Negate Value\"\n";

    #[test]
    fn modbus_rows_map_to_tag_keys() {
        let csv = format!(
            "{HEADER}\"Pressure\",\"400001\",\"Float\",\"1\",\"RO\",\"500\",\"None\",\"\",\"\",\"\",\"\",\"\",\"0\",\"0\",\"bar\",\"Main \"\"ram\"\"\",\"0\"\n\
             \"Temp\",\"40003\",\"Word\",\"1\",\"R/W\",\"1000\",\"Linear\",\"0\",\"4095\",\"-50\",\"150\",\"Double\",\"0\",\"0\",\"degC\",\"\",\"0\"\n\
             \"Pump\",\"400011.3\",\"Boolean\",\"1\",\"RO\",\"100\",\"\",\"\",\"\",\"\",\"\",\"\",\"\",\"\",\"\",\"\",\"\"\n\
             \"Recipe\",\"400021.16H\",\"String\",\"1\",\"RO\",\"\",\"\",\"\",\"\",\"\",\"\",\"\",\"\",\"\",\"\",\"\",\"\"\n"
        );
        let options = KepwareOptions {
            modbus: true,
            prefix: "press-3:".into(),
            word_order: Some(WordOrder::CDAB),
            defaults_have_order: false,
        };
        let (rows, problems) = run(&csv, &options);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            rows[0],
            serde_json::json!({"sensor_id": "press-3:Pressure", "modicon": "400001", "type": "float32", "order": "CDAB", "interval": "500ms", "fields": {"unit": "bar", "description": "Main \"ram\""}})
        );
        let scale = 200.0 / 4095.0;
        assert_eq!(rows[1]["scale"], serde_json::json!(scale));
        assert_eq!(rows[1]["offset"], serde_json::json!(-50.0));
        assert_eq!(
            rows[2],
            serde_json::json!({"sensor_id": "press-3:Pump", "modicon": "400011", "type": "bool", "bit": 3, "interval": "100ms"})
        );
        assert_eq!(rows[3]["length"], serde_json::json!(8));
    }

    #[test]
    fn what_has_no_equivalent_is_reported_never_guessed() {
        let csv = format!(
            "{HEADER}\"A\",\"400001\",\"BCD\",,,,,,,,,,,,,,\n\
             \"B\",\"400002\",\"Word\",,\"WO\",,,,,,,,,,,,\n\
             \"C\",\"400003\",\"Word\",,,,\"Square Root\",,,,,,,,,,\n\
             \"D\",\"400004\",\"Word\",,,,\"Linear\",0,10,0,100,\"Long\",1,0,,,\n\
             \"E\",\"400005.10L\",\"String\",,,,,,,,,,,,,,\n\
             \"F\",\"400006\",\"Float\",,,,,,,,,,,,,,\n\
             \"G\",\"400010\",\"DWord\",,,,,,,,,,,,,,\n\
             \"H\",\"400012 [4]\",\"Word Array\",,,,,,,,,,,,,,\n\
             \"I\",\"400016\",\"Wrod\",,,,,,,,,,,,,,\n"
        );
        let options = KepwareOptions {
            modbus: true,
            ..Default::default()
        };
        let (rows, problems) = run(&csv, &options);
        assert!(rows.is_empty(), "{rows:?}");
        assert_eq!(
            problems,
            [
                "2:3: Kepware type `BCD` has no tagbridge equivalent",
                "3:5: a write-only tag cannot be read",
                "4:7: Scaling `Square Root` has no tagbridge equivalent",
                "5:13: Clamp Low has no tagbridge equivalent",
                "5:12: Scaled Data Type `Long` would round the scaled values",
                "6:2: Kepware address `400005.10L` stores the string low byte first",
                "9:3: Kepware type `Word Array` is an array",
                "9:2: Kepware address `400012 [4]` is not a Modbus reference tagbridge reads",
                "10:3: unknown Kepware type `Wrod`",
                "7:3: this 32- or 64-bit value needs the device's word order (and 1 more rows)",
            ]
        );
    }
}
