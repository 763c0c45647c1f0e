//! Tables for people: aligned text columns for the terminal and Markdown for a pull-request
//! comment. The one renderer behind `compare`, `verify-reproducible` and the CI summary.

use std::fmt::Write as _;

/// How a column lines up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    /// Numbers.
    Right,
}

/// Aligned text: each column as wide as its widest cell, two spaces between columns, trailing
/// spaces trimmed.
pub fn text(header: &[&str], rows: &[Vec<String>], align: &[Align]) -> String {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut widths = vec![0; header.len()];
    for row in std::iter::once(&header).chain(rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (w, cell)) in widths.iter().zip(row).enumerate() {
            let pad = " ".repeat(w - cell.chars().count());
            match align.get(i).copied().unwrap_or(Align::Left) {
                Align::Left => write!(line, "{cell}{pad}  "),
                Align::Right => write!(line, "{pad}{cell}  "),
            }
            .expect("writing to a String cannot fail");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A Markdown table; `|` in a cell is escaped.
pub fn markdown(header: &[&str], rows: &[Vec<String>], align: &[Align]) -> String {
    let mut out = format!("| {} |\n|", header.join(" | "));
    for i in 0..header.len() {
        out.push_str(match align.get(i).copied().unwrap_or(Align::Left) {
            Align::Left => "---|",
            Align::Right => "--:|",
        });
    }
    out.push('\n');
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_columns_align_and_trailing_space_is_trimmed() {
        let rows = vec![
            vec!["a".to_string(), "12".to_string(), "x".to_string()],
            vec!["long name".to_string(), "3".to_string(), "".to_string()],
        ];
        let out = text(
            &["name", "n", "note"],
            &rows,
            &[Align::Left, Align::Right, Align::Left],
        );
        assert_eq!(
            out,
            "name        n  note\na          12  x\nlong name   3\n"
        );
    }

    #[test]
    fn markdown_escapes_pipes_and_marks_numeric_columns() {
        let out = markdown(
            &["a", "b"],
            &[vec!["x|y".into(), "1".into()]],
            &[Align::Left, Align::Right],
        );
        assert_eq!(out, "| a | b |\n|---|--:|\n| x\\|y | 1 |\n");
    }
}
