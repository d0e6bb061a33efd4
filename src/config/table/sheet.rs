//! CSV text ⇄ cells with positions, through the `csv` crate (RFC 4180 quoting).
//!
//! Reading: a UTF-8 byte order mark is skipped; the delimiter is `,` or `;`, found on the
//! header line unless given (Excel writes `;` where the decimal separator is a comma); rows of
//! empty cells (what spreadsheets leave below a table) are skipped; a row with more or fewer
//! cells than the header is a problem at its line, and the other rows are still read. Every
//! cell keeps its place: the line where its row starts and its column number (1 = A).
//!
//! Writing: `\r\n` line ends, quotes only where a cell needs them, an optional byte order mark
//! so that Excel reads the file as UTF-8.

use crate::config::diagnostic::{Pos, Problem};

/// One cell and where it is: the line where its row starts, its 1-based column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub pos: Pos,
    pub text: String,
}

/// A table read from CSV: the header row and the rows under it, each as long as the header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sheet {
    pub header: Vec<Cell>,
    pub rows: Vec<Vec<Cell>>,
}

/// How a CSV file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvStyle {
    /// `b','` or `b';'`.
    pub delimiter: u8,
    /// Start with a UTF-8 byte order mark (Excel then reads the file as UTF-8).
    pub bom: bool,
}

impl Default for CsvStyle {
    fn default() -> Self {
        CsvStyle {
            delimiter: b',',
            bom: false,
        }
    }
}

/// The byte order mark some editors (Excel's "CSV UTF-8") put first.
const BOM: char = '\u{FEFF}';

/// The delimiter of a table whose text is `text`: `;` when the header line holds more `;`
/// than `,` outside quotes, `,` otherwise.
pub fn sniff_delimiter(text: &str) -> u8 {
    let (mut commas, mut semicolons, mut quoted) = (0usize, 0usize, false);
    for c in text.trim_start_matches(BOM).chars() {
        match c {
            '"' => quoted = !quoted,
            '\n' | '\r' if !quoted => break,
            ',' if !quoted => commas += 1,
            ';' if !quoted => semicolons += 1,
            _ => {}
        }
    }
    if semicolons > commas {
        b';'
    } else {
        b','
    }
}

/// Reads a table. The problems are the rows whose shape is wrong; the sheet holds the others.
pub fn read_sheet(text: &str, delimiter: Option<u8>) -> (Sheet, Vec<Problem>) {
    let text = text.strip_prefix(BOM).unwrap_or(text);
    let delimiter = delimiter.unwrap_or_else(|| sniff_delimiter(text));
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(text.as_bytes());
    let mut sheet = Sheet::default();
    let mut problems = Vec::new();
    let mut record = csv::StringRecord::new();
    // The reader counts only the line breaks between records: lines inside quoted cells are
    // counted here, from each record's byte offset.
    let mut lines = LineCounter::new(text);
    loop {
        let line = lines.line_at(reader.position().byte() as usize);
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(error) => {
                // Input is a `&str`, so the reader cannot meet bad UTF-8 or an I/O error;
                // report whatever it is at its line rather than assume.
                let line = error
                    .position()
                    .map_or(line, |p| lines.line_at(p.byte() as usize));
                problems.push(Problem::new(
                    Pos { line, col: 1 },
                    format!("cannot read this CSV row: {error}"),
                ));
                break;
            }
        }
        let line = record
            .position()
            .map_or(line, |p| lines.line_at(p.byte() as usize));
        let cells: Vec<Cell> = record
            .iter()
            .enumerate()
            .map(|(i, text)| Cell {
                pos: Pos {
                    line,
                    col: i as u32 + 1,
                },
                text: text.to_string(),
            })
            .collect();
        if sheet.header.is_empty() && sheet.rows.is_empty() && problems.is_empty() {
            sheet.header = cells;
            continue;
        }
        if cells.iter().all(|c| c.text.is_empty()) {
            continue;
        }
        let expected = sheet.header.len();
        if cells.len() != expected {
            let extra_is_empty = cells.iter().skip(expected).all(|c| c.text.is_empty());
            if cells.len() > expected && extra_is_empty {
                // Trailing empty cells (a spreadsheet's stray separators) carry nothing.
                sheet.rows.push(cells.into_iter().take(expected).collect());
                continue;
            }
            problems.push(
                Problem::new(
                    Pos { line, col: 1 },
                    format!(
                        "this row has {} cells and the header has {expected}",
                        cells.len()
                    ),
                )
                .with_hint(format!(
                    "check the separators and quotes on this row; the separator is `{}`",
                    delimiter as char
                )),
            );
            continue;
        }
        sheet.rows.push(cells);
    }
    (sheet, problems)
}

/// 1-based line numbers of byte offsets, asked in increasing order: `\r\n`, `\n` and a lone
/// `\r` each end a line.
struct LineCounter<'a> {
    text: &'a [u8],
    at: usize,
    line: u32,
}

impl<'a> LineCounter<'a> {
    fn new(text: &'a str) -> Self {
        LineCounter {
            text: text.as_bytes(),
            at: 0,
            line: 1,
        }
    }

    fn line_at(&mut self, offset: usize) -> u32 {
        // The reader may place a record at the line break before it: no record starts with one.
        let mut offset = offset.min(self.text.len());
        while matches!(self.text.get(offset), Some(b'\n' | b'\r')) {
            offset += 1;
        }
        while self.at < offset {
            match self.text[self.at] {
                b'\n' => self.line += 1,
                b'\r' if self.text.get(self.at + 1) != Some(&b'\n') => self.line += 1,
                _ => {}
            }
            self.at += 1;
        }
        self.line
    }
}

/// Writes a table as CSV: `header`, then `rows` (each as long as the header).
pub fn write_csv(header: &[String], rows: &[Vec<String>], style: CsvStyle) -> Vec<u8> {
    let mut out = Vec::new();
    if style.bom {
        out.extend_from_slice(BOM.to_string().as_bytes());
    }
    {
        let mut writer = csv::WriterBuilder::new()
            .delimiter(style.delimiter)
            .terminator(csv::Terminator::CRLF)
            .from_writer(&mut out);
        // Writing to a Vec cannot fail: errors only come from the underlying writer.
        let _ = writer.write_record(header);
        for row in rows {
            let _ = writer.write_record(row);
        }
        let _ = writer.flush();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sheet: &Sheet) -> Vec<Vec<&str>> {
        sheet
            .rows
            .iter()
            .map(|r| r.iter().map(|c| c.text.as_str()).collect())
            .collect()
    }

    #[test]
    fn semicolons_bom_quotes_and_line_breaks_in_cells() {
        let text = "\u{FEFF}sensor_id;fields.note\r\na;\"x;\"\"y\"\"\r\nz\"\r\n;\r\nb;2\r\n";
        let (sheet, problems) = read_sheet(text, None);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(sheet.header[1].text, "fields.note");
        assert_eq!(texts(&sheet), [vec!["a", "x;\"y\"\r\nz"], vec!["b", "2"]]);
        assert_eq!(sheet.rows[1][1].pos, Pos { line: 5, col: 2 });
    }

    #[test]
    fn a_row_of_the_wrong_length_is_reported_and_the_rest_read() {
        let (sheet, problems) = read_sheet("a,b\n1,2,3\n4,5,,\n6\n7,8\n", None);
        assert_eq!(texts(&sheet), [vec!["4", "5"], vec!["7", "8"]]);
        let lines: Vec<u32> = problems.iter().map(|p| p.pos.line).collect();
        assert_eq!(lines, [2, 4]);
        assert_eq!(
            problems[0].message,
            "this row has 3 cells and the header has 2"
        );
    }

    #[test]
    fn written_tables_read_back() {
        let header = vec!["sensor_id".to_string(), "fields.note".to_string()];
        let rows = vec![vec!["a,b".to_string(), "say \"hi\"\nthere".to_string()]];
        for delimiter in [b',', b';'] {
            let bytes = write_csv(
                &header,
                &rows,
                CsvStyle {
                    delimiter,
                    bom: true,
                },
            );
            let text = String::from_utf8(bytes).unwrap();
            let (sheet, problems) = read_sheet(&text, None);
            assert!(problems.is_empty());
            assert_eq!(texts(&sheet), [vec!["a,b", "say \"hi\"\nthere"]]);
        }
    }
}
