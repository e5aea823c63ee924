//! Diagnostics of hand-checked TOML files — the gateway configuration, meter model files, the
//! simulator's file: byte offsets turned into `LINE:COL`, a [`Report`] that collects every
//! problem (and warning) as `FILE:LINE:COL: message`, and [`Section`], which reads the keys of
//! one table with their types, reports unknown keys with a "did you mean" (one [`nearest`], one
//! [`edit_distance`]) and wrong types with what was found.
//!
//! Every message is passed through [`shown`] when it is recorded, so a value the user wrote
//! with an invisible character (a zero-width space, a BOM, a control character) is shown
//! escaped: `unknown protocol `modbus\u{200b}-tcp``.
//!
//! A leaf: it knows TOML and text positions, nothing of the gateway.

use std::ops::Range;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One problem (or warning) in a file, at a 1-based line and column (in characters).
/// `Display` writes it `FILE:LINE:COL: message`, invisible characters [`shown`] escaped (also
/// in a problem not made by a [`Report`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            shown(&self.file),
            self.line,
            self.col,
            shown(&self.message)
        )
    }
}

impl std::error::Error for Problem {}

/// 1-based line and column (in characters) of byte offset `offset` in `text`; offsets past the
/// end count as the end, offsets inside a character as that character.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// True for a character a reader of a message cannot see, or cannot tell from a space: control
/// characters, format characters (zero-width spaces and joiners, bidi marks, the BOM, the soft
/// hyphen), spaces other than the ASCII one, variation selectors.
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || (c.is_whitespace() && c != ' ')
        || matches!(c,
            '\u{ad}' | '\u{34f}' | '\u{61c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
            | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}'
            | '\u{ffa0}' | '\u{fff0}'..='\u{fffb}' | '\u{e0000}'..='\u{e007f}')
}

/// `text` with every [`is_invisible`] character written as a Rust escape (`\u{200b}`), so a
/// message shows what was really written. Line breaks and tabs are escaped too: a problem is
/// one line. Text without such characters is returned as is.
pub fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_invisible) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_invisible(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// At most `max` characters of `text`, with `…` and the full length when it was cut: for
/// messages that quote a value the user may have made very long.
pub fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((end, _)) => format!("{}… ({} characters)", &text[..end], text.chars().count()),
    }
}

/// The problems and warnings found so far in one file, and what is needed to place them.
/// A warning does not make the file invalid (an old key still accepted, say).
pub struct Report<'s> {
    file: String,
    text: &'s str,
    /// Byte offset of the start of each line, so that placing a problem costs a binary search
    /// and one line's characters, not a scan of the file (a model file of 20,000 registers).
    line_starts: Vec<usize>,
    pub problems: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl<'s> Report<'s> {
    pub fn new(file: String, text: &'s str) -> Report<'s> {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Report {
            file,
            text,
            line_starts,
            problems: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        // The last line starting at or before `offset`.
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        (line, self.text[start..offset].chars().count() + 1)
    }

    /// 1-based line of a byte offset.
    pub fn line(&self, offset: usize) -> usize {
        self.position(offset).0
    }

    /// The problem `message` at a byte offset of the file, invisible characters [`shown`].
    pub fn problem(&self, offset: usize, message: impl Into<String>) -> Problem {
        let (line, col) = self.position(offset);
        let message = message.into();
        Problem {
            file: self.file.clone(),
            line,
            col,
            message: shown(&message).into_owned(),
        }
    }

    /// Records a problem at a byte offset of the file.
    pub fn at(&mut self, offset: usize, message: impl Into<String>) {
        let problem = self.problem(offset, message);
        self.problems.push(problem);
    }

    /// Records a warning at a byte offset of the file.
    pub fn warn(&mut self, offset: usize, message: impl Into<String>) {
        let warning = self.problem(offset, message);
        self.warnings.push(warning);
    }

    /// Reports each key of `table` that is not in `known` (see [`unknown_key`]).
    pub fn unknown_keys(&mut self, table: &DeTable, title: &str, known: &[&str]) {
        for key in table.keys() {
            if !known.contains(&key.get_ref().as_ref()) {
                self.at(key.span().start, unknown_key(key.get_ref(), title, known));
            }
        }
    }

    /// The source text of a span (for messages that quote what was written).
    pub fn source(&self, span: Range<usize>) -> &'s str {
        self.text.get(span).unwrap_or("")
    }
}

/// "a string", "an integer", ... for "found ..." messages.
pub fn with_article(type_name: &str) -> String {
    match type_name.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_name}"),
        _ => format!("a {type_name}"),
    }
}

/// One table of the document (`[gateway]`, one `[[bus]]`, ...), read key by key.
pub struct Section<'d, 'i> {
    /// How messages name the table: `[gateway]`, `[[bus]]`.
    pub title: &'static str,
    table: &'d DeTable<'i>,
    /// Byte offset of the table's header (where "missing key" problems point).
    pub start: usize,
}

impl<'d, 'i> Section<'d, 'i> {
    /// Wraps `table` and reports each of its keys that is not in `known`.
    pub fn new(
        report: &mut Report,
        title: &'static str,
        table: &'d DeTable<'i>,
        start: usize,
        known: &[&str],
    ) -> Section<'d, 'i> {
        report.unknown_keys(table, title, known);
        Section {
            title,
            table,
            start,
        }
    }

    pub fn get(&self, key: &str) -> Option<&'d Spanned<DeValue<'i>>> {
        self.table.get(key)
    }

    /// Reports `key` as missing from this table, with an example of what to write.
    pub fn missing(&self, report: &mut Report, key: &str, example: &str) {
        report.at(
            self.start,
            format!(
                "missing required key `{key}` in {}; add e.g. `{example}`",
                self.title
            ),
        );
    }

    fn wrong_type(&self, report: &mut Report, key: &str, expected: &str, found: &DeValue) {
        let found = found.type_str();
        report.at(
            self.table.get(key).map_or(self.start, |v| v.span().start),
            format!("`{key}` must be {expected}, found {}", with_article(found)),
        );
    }

    /// A string value; reports a wrong type.
    pub fn string(&self, report: &mut Report, key: &str) -> Option<Spanned<String>> {
        let value = self.get(key)?;
        match value.get_ref() {
            DeValue::String(s) => Some(Spanned::new(value.span(), s.to_string())),
            other => {
                self.wrong_type(report, key, "a string", other);
                None
            }
        }
    }

    /// A string value that must be present and not empty.
    pub fn required_string(
        &self,
        report: &mut Report,
        key: &str,
        example: &str,
    ) -> Option<Spanned<String>> {
        if self.get(key).is_none() {
            self.missing(report, key, example);
            return None;
        }
        let s = self.string(report, key)?;
        if s.get_ref().trim().is_empty() {
            report.at(
                s.span().start,
                format!("`{key}` must not be empty; write e.g. `{example}`"),
            );
            return None;
        }
        Some(s)
    }

    /// An integer value (decimal, `0x` hex, `0o`, `0b`); reports a wrong type.
    pub fn integer(&self, report: &mut Report, key: &str) -> Option<Spanned<i128>> {
        let value = self.get(key)?;
        match value.get_ref() {
            DeValue::Integer(i) => match i128::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(Spanned::new(value.span(), n)),
                Err(_) => {
                    report.at(value.span().start, format!("`{key}` is too large"));
                    None
                }
            },
            other => {
                self.wrong_type(report, key, "an integer", other);
                None
            }
        }
    }

    /// An integer in `min..=max` (`unit` is appended to the bounds in the message, e.g. " ms").
    /// Missing: `None` without a problem.
    pub fn integer_in(
        &self,
        report: &mut Report,
        key: &str,
        min: i128,
        max: i128,
        unit: &str,
    ) -> Option<Spanned<i128>> {
        let n = self.integer(report, key)?;
        if (min..=max).contains(n.get_ref()) {
            Some(n)
        } else {
            report.at(
                n.span().start,
                format!(
                    "`{key}` must be from {min} to {max}{unit}, found {}",
                    n.get_ref()
                ),
            );
            None
        }
    }

    /// A number: a float, or an integer taken as a float; reports a wrong type.
    pub fn number(&self, report: &mut Report, key: &str) -> Option<Spanned<f64>> {
        let value = self.get(key)?;
        let parsed = match value.get_ref() {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            other => {
                self.wrong_type(report, key, "a number", other);
                return None;
            }
        };
        match parsed {
            Some(x) => Some(Spanned::new(value.span(), x)),
            None => {
                report.at(value.span().start, format!("`{key}` is not a valid number"));
                None
            }
        }
    }

    /// A boolean value; reports a wrong type.
    pub fn boolean(&self, report: &mut Report, key: &str) -> Option<Spanned<bool>> {
        let value = self.get(key)?;
        match value.get_ref() {
            DeValue::Boolean(b) => Some(Spanned::new(value.span(), *b)),
            other => {
                self.wrong_type(report, key, "a boolean (true or false)", other);
                None
            }
        }
    }

    /// An array of strings; reports a wrong type of the array or of any element.
    /// The outer span is the array's.
    pub fn string_array(
        &self,
        report: &mut Report,
        key: &str,
        what: &str,
    ) -> Option<Spanned<Vec<Spanned<String>>>> {
        let value = self.get(key)?;
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(report, key, &format!("an array of {what}"), value.get_ref());
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push(Spanned::new(item.span(), s.to_string())),
                other => {
                    report.at(
                        item.span().start,
                        format!(
                            "`{key}` must be an array of {what}, found {} in it",
                            with_article(other.type_str())
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then(|| Spanned::new(value.span(), out))
    }
}

/// The message for a key of the table `title` that is not among `known`: "did you mean" the
/// [`nearest`] known key, or the list of them.
pub fn unknown_key(key: &str, title: &str, known: &[&str]) -> String {
    match nearest(key, known.iter().copied()) {
        Some(near) => format!("unknown key `{key}` in {title}; did you mean `{near}`?"),
        None => format!(
            "unknown key `{key}` in {title}; the keys of {title} are: {}",
            known.join(", ")
        ),
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a plausible
/// typo (or one contains the other, as `baudrate` contains `baud`).
pub fn nearest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_lowercase();
    candidates
        .filter_map(|c| {
            let d = edit_distance(&lower, &c.to_lowercase());
            let close = d <= (lower.chars().count().max(c.len()) / 3).max(2);
            let contains = c.len() >= 3 && (lower.contains(c) || c.contains(lower.as_str()));
            (close || contains).then_some((d, c))
        })
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// "did you mean `x`? " (with the trailing space) for the [`nearest`] candidate, or nothing.
pub fn did_you_mean<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    nearest(word, candidates)
        .map(|n| format!("did you mean `{n}`? "))
        .unwrap_or_default()
}

/// Up to `n` candidates, closest to `word` by [`edit_distance`] first (ties keep the
/// candidates' order): for "closest valid names" lists, where any hint helps.
pub fn closest<'a>(word: &str, candidates: &[&'a str], n: usize) -> Vec<&'a str> {
    let mut scored: Vec<(usize, usize, &str)> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (edit_distance(word, c), i, *c))
        .collect();
    scored.sort();
    scored.into_iter().take(n).map(|(_, _, c)| c).collect()
}

/// Levenshtein distance, in characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("baud", "baud"), 0);
        assert_eq!(edit_distance("baudrate", "baud"), 4);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn suggestions() {
        let keys = ["name", "protocol", "device", "baud", "parity", "data_bits"];
        assert_eq!(nearest("baudrate", keys.iter().copied()), Some("baud"));
        assert_eq!(nearest("protcol", keys.iter().copied()), Some("protocol"));
        assert_eq!(nearest("databits", keys.iter().copied()), Some("data_bits"));
        assert_eq!(nearest("zzzzzzzz", keys.iter().copied()), None);
    }

    #[test]
    fn closest_names_come_by_edit_distance() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        let names = ["frequency_hz", "power_kw", "voltage_l1_v"];
        assert_eq!(closest("frequency", &names, 1), vec!["frequency_hz"]);
        assert_eq!(closest("x", &names, 5).len(), 3);
    }

    #[test]
    fn line_col_counts_characters() {
        let text = "ab\n€x\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, 6), (2, 2));
        assert_eq!(line_col(text, 4), (2, 1), "inside the €");
        assert_eq!(line_col(text, 100), (3, 1));
    }

    #[test]
    fn positions_agree_with_line_col_everywhere() {
        let text = "a = 1\n\nb = \"é€\" x\r\n[t]\nz";
        let r = Report::new("f".into(), text);
        for offset in 0..=text.len() + 2 {
            assert_eq!(
                r.position(offset),
                line_col(text, offset),
                "offset {offset}"
            );
        }
        let r = Report::new("f".into(), "");
        assert_eq!(r.position(5), (1, 1));
    }

    #[test]
    fn invisible_characters_are_shown_escaped() {
        assert_eq!(shown("modbus-tcp"), "modbus-tcp");
        assert_eq!(shown("modbus\u{200b}-tcp"), "modbus\\u{200b}-tcp");
        assert_eq!(shown("\u{feff}gw1\t"), "\\u{feff}gw1\\u{9}");
        assert_eq!(shown("a\u{a0}b"), "a\\u{a0}b");
        // Visible text, in any script, is left alone.
        assert_eq!(shown("台区 é €"), "台区 é €");
        let mut r = Report::new("f.toml".into(), "x");
        r.at(0, "unknown protocol `modbus\u{200b}-tcp`");
        assert_eq!(
            r.problems[0].to_string(),
            "f.toml:1:1: unknown protocol `modbus\\u{200b}-tcp`"
        );
    }

    #[test]
    fn a_problem_made_by_hand_is_shown_escaped_too() {
        let p = Problem {
            file: "f\u{200b}.toml".into(),
            line: 1,
            col: 1,
            message: "cannot read \u{feff}".into(),
        };
        assert_eq!(p.to_string(), "f\\u{200b}.toml:1:1: cannot read \\u{feff}");
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        assert_eq!(cut("abc", 5), "abc");
        assert_eq!(cut("abcdef", 3), "abc… (6 characters)");
    }

    #[test]
    fn positions_count_characters() {
        let r = Report::new("f".into(), "a = 1\nb = \"é\" x\n");
        assert_eq!(r.position(0), (1, 1));
        assert_eq!(r.position(6), (2, 1));
        // "é" is two bytes: the `x` after it is column 9, not 10.
        assert_eq!(r.position(15), (2, 9));
    }
}
