//! The model file format (`protocols/*.toml`): reading one file's text into a [`MeterModel`]
//! and validating it, collecting every problem with its line and column.
//!
//! The format is described for field engineers in `protocols/README.md`. Parsing keeps the
//! TOML spans (`toml::de::DeTable`) so that every message points at the key or value at fault.

use std::collections::HashMap;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::library::{DataType, MeterModel, ModelError, RegisterDef, WordOrder};
use crate::diagnostic::{Report, closest};
use crate::model::{QUANTITIES, is_quantity};

/// The largest block the Modbus standard allows for functions 03 and 04.
pub const STANDARD_MAX_BLOCK: u16 = 125;

const TOP_KEYS: &[&str] = &["model", "register", "setup"];
const MODEL_KEYS: &[&str] = &[
    "name",
    "vendor",
    "description",
    "phases",
    "max_block",
    "max_gap",
    "unit_switch_pause_ms",
    "inter_frame_pause_ms",
    "function",
    "type",
    "word_order",
];
const REGISTER_KEYS: &[&str] = &[
    "quantity",
    "address",
    "function",
    "type",
    "word_order",
    "scale",
];
const TYPE_NAMES: &str = "\"u16\", \"i16\", \"u32\", \"i32\", \"f32\", \"u64\" or \"f64\"";
const ORDER_NAMES: &str = "\"abcd\", \"cdab\", \"badc\" or \"dcba\"";
/// Longest pause a model may ask for; anything longer is a typo (seconds meant as ms).
const MAX_PAUSE_MS: i64 = 10_000;

/// A model parsed from a file, with the positions later checks need (a library that finds the
/// same name in two files points at both).
#[derive(Debug, Clone)]
pub struct ParsedModel {
    pub model: MeterModel,
    /// Line and column of the model's `name` value.
    pub name_at: (usize, usize),
}

/// Parses and validates one model file's text; `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<ParsedModel, Vec<ModelError>> {
    let mut file = FileCheck {
        source,
        report: Report::new(source.to_string(), text),
    };
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let at = e.span().map(|s| s.start).unwrap_or(0);
            let first_line = e.message().lines().next().unwrap_or("").trim().to_string();
            file.error(
                at..at,
                format!(
                    "this is not valid TOML: {first_line}; fix the syntax (see protocols/README.md)"
                ),
            );
            return Err(file.report.problems);
        }
    };
    let parsed = file.model(doc.get_ref());
    let mut errors = file.report.problems;
    if errors.is_empty() {
        Ok(parsed.expect("a model without errors is complete"))
    } else {
        errors.sort_by_key(|e| (e.line, e.col));
        Err(errors)
    }
}

/// Register settings `[model]` gives to every `[[register]]` that does not set them itself.
struct RegisterDefaults {
    /// The model's phases, when valid: a single-phase model has no L2/L3 quantities.
    phases: Option<u8>,
    function: Option<u8>,
    data_type: Option<DataType>,
    word_order: WordOrder,
}

/// One `[[register]]` as read, with the spans later cross-checks point at.
struct RegisterEntry {
    def: RegisterDef,
    /// Span of the `address` value (overlaps are reported there).
    address_span: Range<usize>,
    /// Span of the `quantity` value (duplicates are reported there).
    quantity_span: Range<usize>,
}

/// The checks of one file: its name and the problems found so far.
struct FileCheck<'t> {
    source: &'t str,
    report: Report<'t>,
}

impl FileCheck<'_> {
    fn error(&mut self, span: Range<usize>, message: String) {
        self.report.at(span.start, message);
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        self.report.line(span.start)
    }

    /// The whole document. Returns the model when every required part was found.
    fn model(&mut self, doc: &DeTable<'_>) -> Option<ParsedModel> {
        self.report
            .unknown_keys(doc, "the top level of a model file", TOP_KEYS);
        let Some((model_key, model_value)) = doc.get_key_value("model") else {
            self.error(
                0..0,
                "there is no [model] section; start the file with [model] and its name, vendor \
                 and phases (see protocols/README.md)"
                    .into(),
            );
            // Still check the registers, with no defaults, to report their problems too.
            let defaults = RegisterDefaults {
                phases: None,
                function: None,
                data_type: None,
                word_order: WordOrder::Abcd,
            };
            self.registers(doc, &defaults, 0..0);
            return None;
        };
        let table = self.table(model_key, model_value, "[model]")?;
        self.report.unknown_keys(table, "[model]", MODEL_KEYS);

        let name = self.required_string(table, "name", model_key.span(), "[model]");
        let name_at = table
            .get("name")
            .map(|v| self.report.position(v.span().start))
            .unwrap_or((0, 0));
        if let Some((name, span)) = &name {
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '/') {
                self.error(
                    span.clone(),
                    format!(
                        "model name \"{name}\" must be a non-empty word without spaces or '/', \
                         e.g. \"eastron-sdm630\"; meters refer to it in `[[meter]] model`"
                    ),
                );
            }
        }
        let vendor = self.optional_string(table, "vendor").unwrap_or_default();
        let description = self
            .optional_string(table, "description")
            .unwrap_or_default();
        let phases = match self.integer(table, "phases", "the number of phases, 1 or 3") {
            None => {
                self.error(
                    model_key.span(),
                    "[model] has no `phases`; add `phases = 1` or `phases = 3`".into(),
                );
                None
            }
            Some((p, _)) if p == 1 || p == 3 => Some(p as u8),
            Some((p, span)) => {
                self.error(
                    span,
                    format!(
                        "phases = {p} is not possible; use 1 (single-phase) or 3 (three-phase)"
                    ),
                );
                None
            }
        };
        let max_block = match self.integer(table, "max_block", "a number of registers") {
            None => Some(STANDARD_MAX_BLOCK),
            Some((n, _)) if (1..=i64::from(STANDARD_MAX_BLOCK)).contains(&n) => Some(n as u16),
            Some((n, span)) => {
                self.error(
                    span,
                    format!(
                        "max_block = {n} is out of range; use 1 ..= 125 (125 is the Modbus \
                         maximum; set it lower when the meter rejects long reads)"
                    ),
                );
                None
            }
        };
        let max_gap = match self.integer(table, "max_gap", "a number of registers") {
            None => Some(0),
            Some((n, _)) if (0..=i64::from(STANDARD_MAX_BLOCK)).contains(&n) => Some(n as u16),
            Some((n, span)) => {
                self.error(
                    span,
                    format!(
                        "max_gap = {n} is out of range; use 0 ..= 125 (0 reads only contiguous \
                         registers)"
                    ),
                );
                None
            }
        };
        let mut pause = |key: &str| match self.integer(table, key, "milliseconds") {
            None => Some(0),
            Some((n, _)) if (0..=MAX_PAUSE_MS).contains(&n) => Some(n as u64),
            Some((n, span)) => {
                self.error(
                    span,
                    format!("{key} = {n} is out of range; use 0 ..= {MAX_PAUSE_MS} milliseconds"),
                );
                None
            }
        };
        let unit_switch_pause_ms = pause("unit_switch_pause_ms");
        let inter_frame_pause_ms = pause("inter_frame_pause_ms");
        let defaults = RegisterDefaults {
            phases,
            function: table.get("function").and_then(|v| self.function(v)),
            data_type: table.get("type").and_then(|v| self.data_type(v)),
            word_order: table
                .get("word_order")
                .and_then(|v| self.word_order(v))
                .unwrap_or(WordOrder::Abcd),
        };
        let registers = self.registers(doc, &defaults, model_key.span());
        let setup = super::setup::parse(&mut self.report, doc);

        Some(ParsedModel {
            model: MeterModel {
                name: name?.0,
                vendor,
                description,
                phases: phases?,
                max_block: max_block?,
                max_gap: max_gap?,
                unit_switch_pause_ms: unit_switch_pause_ms?,
                inter_frame_pause_ms: inter_frame_pause_ms?,
                registers: registers?,
                setup: setup?,
                source: self.source.to_string(),
            },
            name_at,
        })
    }

    /// Every `[[register]]`, then the checks across them (overlaps, duplicates).
    fn registers(
        &mut self,
        doc: &DeTable<'_>,
        defaults: &RegisterDefaults,
        model_span: Range<usize>,
    ) -> Option<Vec<RegisterDef>> {
        let Some((key, value)) = doc.get_key_value("register") else {
            self.error(
                model_span,
                "the model has no registers; add at least one [[register]] with `quantity` and \
                 `address`"
                    .into(),
            );
            return None;
        };
        let Some(items) = value.get_ref().as_array() else {
            self.error(
                value.span(),
                format!(
                    "`register` must be a list of tables, written as [[register]] sections; \
                     found {}",
                    value.get_ref().type_str()
                ),
            );
            return None;
        };
        if items.is_empty() {
            self.error(
                key.span(),
                "the model has no registers; add at least one [[register]]".into(),
            );
            return None;
        }
        let mut entries = Vec::with_capacity(items.len());
        let mut complete = true;
        for item in items.iter() {
            let Some(table) = item.get_ref().as_table() else {
                self.error(
                    item.span(),
                    format!(
                        "each register must be a table ([[register]]); found {}",
                        item.get_ref().type_str()
                    ),
                );
                complete = false;
                continue;
            };
            // The header of an array-of-tables entry has no span of its own in every case; fall
            // back to the `register` key.
            let at = if item.span().is_empty() {
                key.span()
            } else {
                item.span()
            };
            match self.register(table, defaults, at) {
                Some(entry) => entries.push(entry),
                None => complete = false,
            }
        }
        self.cross_check(&entries);
        complete.then(|| entries.into_iter().map(|e| e.def).collect())
    }

    /// One `[[register]]` table.
    fn register(
        &mut self,
        table: &DeTable<'_>,
        defaults: &RegisterDefaults,
        at: Range<usize>,
    ) -> Option<RegisterEntry> {
        self.report
            .unknown_keys(table, "[[register]]", REGISTER_KEYS);
        let quantity = self.required_string(table, "quantity", at.clone(), "[[register]]");
        if let Some((name, span)) = &quantity {
            if !is_quantity(name) {
                self.error(
                    span.clone(),
                    format!(
                        "unknown quantity \"{name}\"; closest valid names: {}; the full list is \
                         in protocols/README.md",
                        closest(name, QUANTITIES, 3)
                            .iter()
                            .map(|q| format!("\"{q}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        if let (Some((name, span)), Some(1)) = (&quantity, defaults.phases)
            && !fits_single_phase(name)
        {
            self.error(
                span.clone(),
                format!(
                    "quantity \"{name}\" does not exist on a single-phase meter ([model] phases = \
                     1); a single-phase model maps L1 (or no phase) quantities only: remove this \
                     register, or set `phases = 3` if the meter is three-phase"
                ),
            );
        }
        let address = match self.integer(table, "address", "a zero-based register address") {
            None => {
                let what = quantity
                    .as_ref()
                    .map(|(q, _)| format!(" for \"{q}\""))
                    .unwrap_or_default();
                self.error(
                    at.clone(),
                    format!(
                        "[[register]]{what} has no `address`; add the zero-based (PDU) address, \
                         e.g. address = 0x0048"
                    ),
                );
                None
            }
            Some((a, span)) if !(0..=65535).contains(&a) => {
                self.error(
                    span,
                    format!("address {a} is out of range; a register address is 0 ..= 65535"),
                );
                None
            }
            Some((a, span)) => Some((a as u16, span)),
        };
        let function = match table.get("function") {
            Some(v) => self.function(v),
            None => {
                if defaults.function.is_none() {
                    self.error(
                        at.clone(),
                        "no function code for this register; add `function = 3` (holding) or \
                         `function = 4` (input) here or in [model]"
                            .into(),
                    );
                }
                defaults.function
            }
        };
        let data_type = match table.get("type") {
            Some(v) => self.data_type(v),
            None => {
                if defaults.data_type.is_none() {
                    self.error(
                        at.clone(),
                        format!(
                            "no data type for this register; add `type = ...` ({TYPE_NAMES}) \
                             here or in [model]"
                        ),
                    );
                }
                defaults.data_type
            }
        };
        let word_order = match table.get("word_order") {
            Some(v) => self.word_order(v),
            None => Some(defaults.word_order),
        };
        let scale = match table.get("scale") {
            None => Some(1.0),
            Some(v) => match number(v.get_ref()) {
                Some(s) if s.is_finite() && s != 0.0 => Some(s),
                Some(s) => {
                    self.error(
                        v.span(),
                        format!(
                            "scale = {s} is not usable; it must be a finite number other than 0 \
                             (canonical value = raw × scale, e.g. 0.1 for a register in 0.1 V)"
                        ),
                    );
                    None
                }
                None => {
                    self.wrong_type(v, "scale", "a number such as 0.001");
                    None
                }
            },
        };
        let (quantity, quantity_span) = quantity?;
        let (address, address_span) = address?;
        let data_type = data_type?;
        if u32::from(address) + u32::from(data_type.words()) - 1 > 65535 {
            self.error(
                address_span.clone(),
                format!(
                    "\"{quantity}\" at address {address} with {} registers ({}) runs past the last \
                     register address 65535; check the address",
                    data_type.words(),
                    type_name(data_type)
                ),
            );
            return None;
        }
        if !is_quantity(&quantity) {
            return None;
        }
        Some(RegisterEntry {
            def: RegisterDef {
                quantity,
                function: function?,
                address,
                data_type,
                word_order: word_order?,
                scale: scale?,
            },
            address_span,
            quantity_span,
        })
    }

    /// Checks across registers: a quantity mapped twice, registers of one function overlapping.
    /// Each problem is reported once, at the later of the two entries. Linear in the number of
    /// registers: the first entry of each quantity and the entries covering each register word
    /// (a value spans at most 4 words) are looked up, not searched for.
    fn cross_check(&mut self, entries: &[RegisterEntry]) {
        let mut first_of: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
        // (function, register address) → the entries covering that word, in file order.
        let mut covering: HashMap<(u8, u32), Vec<usize>> = HashMap::with_capacity(entries.len());
        for (i, later) in entries.iter().enumerate() {
            if let Some(&j) = first_of.get(later.def.quantity.as_str()) {
                let line = self.line_of(&entries[j].quantity_span);
                self.error(
                    later.quantity_span.clone(),
                    format!(
                        "quantity \"{}\" is mapped twice (also at line {line}); keep the \
                         register the vendor documents for it and remove the other",
                        later.def.quantity
                    ),
                );
            } else {
                first_of.insert(later.def.quantity.as_str(), i);
            }
            let b = &later.def;
            let words = u32::from(b.address)..u32::from(b.address) + u32::from(b.data_type.words());
            let mut earlier: Vec<usize> = words
                .clone()
                .filter_map(|w| covering.get(&(b.function, w)))
                .flatten()
                .copied()
                .collect();
            earlier.sort_unstable();
            earlier.dedup();
            for j in earlier {
                let a = &entries[j].def;
                let line = self.line_of(&entries[j].address_span);
                self.error(
                    later.address_span.clone(),
                    format!(
                        "\"{}\" (function {}, registers {}) overlaps \"{}\" (line {line}, \
                         registers {}); two quantities cannot share a register: check both \
                         addresses and data types against the vendor's table",
                        b.quantity,
                        b.function,
                        register_range(b),
                        a.quantity,
                        register_range(a),
                    ),
                );
            }
            for w in words {
                covering.entry((b.function, w)).or_default().push(i);
            }
        }
    }

    fn table<'a, 'i>(
        &mut self,
        key: &Spanned<std::borrow::Cow<'i, str>>,
        value: &'a Spanned<DeValue<'i>>,
        what: &str,
    ) -> Option<&'a DeTable<'i>> {
        match value.get_ref().as_table() {
            Some(t) => Some(t),
            None => {
                self.error(
                    key.span(),
                    format!(
                        "`{}` must be a table, written as a {what} section; found {}",
                        key.get_ref(),
                        value.get_ref().type_str()
                    ),
                );
                None
            }
        }
    }

    fn wrong_type(&mut self, value: &Spanned<DeValue<'_>>, key: &str, expected: &str) {
        self.error(
            value.span(),
            format!(
                "`{key}` must be {expected}; found {}",
                value.get_ref().type_str()
            ),
        );
    }

    /// A string that must be present; a missing one is reported at `at`.
    fn required_string(
        &mut self,
        table: &DeTable<'_>,
        key: &str,
        at: Range<usize>,
        section: &str,
    ) -> Option<(String, Range<usize>)> {
        match table.get(key) {
            None => {
                self.error(at, format!("{section} has no `{key}`; add {key} = \"...\""));
                None
            }
            Some(v) => match v.get_ref().as_str() {
                Some(s) => Some((s.to_string(), v.span())),
                None => {
                    self.wrong_type(v, key, "a string in quotes");
                    None
                }
            },
        }
    }

    fn optional_string(&mut self, table: &DeTable<'_>, key: &str) -> Option<String> {
        let v = table.get(key)?;
        match v.get_ref().as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.wrong_type(v, key, "a string in quotes");
                None
            }
        }
    }

    /// An optional integer; `None` when absent or of the wrong type (the latter reported).
    fn integer(
        &mut self,
        table: &DeTable<'_>,
        key: &str,
        meaning: &str,
    ) -> Option<(i64, Range<usize>)> {
        let v = table.get(key)?;
        match integer(v.get_ref()) {
            Some(n) => Some((n, v.span())),
            None => {
                self.wrong_type(v, key, &format!("an integer ({meaning})"));
                None
            }
        }
    }

    fn function(&mut self, v: &Spanned<DeValue<'_>>) -> Option<u8> {
        match integer(v.get_ref()) {
            Some(3) => Some(3),
            Some(4) => Some(4),
            Some(n) => {
                self.error(
                    v.span(),
                    format!(
                        "function {n} is not supported; use 3 (read holding registers) or 4 \
                         (read input registers), as the vendor's table says"
                    ),
                );
                None
            }
            None => {
                self.wrong_type(v, "function", "the integer 3 or 4");
                None
            }
        }
    }

    fn data_type(&mut self, v: &Spanned<DeValue<'_>>) -> Option<DataType> {
        let Some(s) = v.get_ref().as_str() else {
            self.wrong_type(v, "type", &format!("one of {TYPE_NAMES}"));
            return None;
        };
        match DataType::from_name(s) {
            Some(t) => Some(t),
            None => {
                self.error(
                    v.span(),
                    format!("unknown data type \"{s}\"; use one of {TYPE_NAMES}"),
                );
                None
            }
        }
    }

    fn word_order(&mut self, v: &Spanned<DeValue<'_>>) -> Option<WordOrder> {
        let Some(s) = v.get_ref().as_str() else {
            self.wrong_type(v, "word_order", &format!("one of {ORDER_NAMES}"));
            return None;
        };
        match WordOrder::from_name(s) {
            Some(o) => Some(o),
            None => {
                self.error(
                    v.span(),
                    format!(
                        "unknown word order \"{s}\"; use one of {ORDER_NAMES} (abcd = high word \
                         first, cdab = low word first)"
                    ),
                );
                None
            }
        }
    }
}

/// The lowercase name of a data type as written in model files.
/// True when a single-phase meter can measure `quantity`: anything but the L2 and L3 phase
/// values and the line-to-line voltages.
pub fn fits_single_phase(quantity: &str) -> bool {
    !["_l2_", "_l3_", "_l12_", "_l23_", "_l31_"]
        .iter()
        .any(|part| quantity.contains(part))
}

fn type_name(t: DataType) -> &'static str {
    t.name()
}

/// `0x0048..0x0049` style range of the registers a value occupies.
fn register_range(def: &RegisterDef) -> String {
    let last = u32::from(def.address) + u32::from(def.data_type.words()) - 1;
    if last == u32::from(def.address) {
        format!("0x{:04X}", def.address)
    } else {
        format!("0x{:04X}..0x{last:04X}", def.address)
    }
}

fn integer(v: &DeValue<'_>) -> Option<i64> {
    let n = v.as_integer()?;
    i64::from_str_radix(n.as_str(), n.radix()).ok()
}

fn number(v: &DeValue<'_>) -> Option<f64> {
    if let Some(f) = v.as_float() {
        return f.as_str().parse().ok();
    }
    integer(v).map(|n| n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<ModelError> {
        parse(text, "test.toml").expect_err("the model should be rejected")
    }

    /// Asserts that some error is at `line:col` and its message contains `needle`.
    fn assert_error(errors: &[ModelError], line: usize, col: usize, needle: &str) {
        assert!(
            errors
                .iter()
                .any(|e| e.line == line && e.col == col && e.message.contains(needle)),
            "no error at {line}:{col} containing {needle:?}; got:\n{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    const MINIMAL: &str = r#"
[model]
name = "demo-meter"
phases = 1
function = 4
type = "f32"

[[register]]
quantity = "energy_import_kwh"
address = 0x0048
"#;

    #[test]
    fn a_minimal_model_takes_the_defaults() {
        let m = parse(MINIMAL, "test.toml").unwrap().model;
        assert_eq!(m.name, "demo-meter");
        assert_eq!(m.vendor, "");
        assert_eq!(m.phases, 1);
        assert_eq!(m.max_block, 125);
        assert_eq!(m.max_gap, 0);
        assert_eq!(m.unit_switch_pause_ms, 0);
        assert_eq!(m.inter_frame_pause_ms, 0);
        assert_eq!(m.source, "test.toml");
        assert_eq!(
            m.registers,
            vec![RegisterDef {
                quantity: "energy_import_kwh".into(),
                function: 4,
                address: 0x48,
                data_type: DataType::F32,
                word_order: WordOrder::Abcd,
                scale: 1.0,
            }]
        );
    }

    #[test]
    fn register_settings_override_the_model_defaults() {
        let text = r#"
[model]
name = "m"
vendor = "V"
description = "D"
phases = 3
max_block = 50
max_gap = 4
unit_switch_pause_ms = 20
inter_frame_pause_ms = 5
function = 4
type = "f32"
word_order = "cdab"

[[register]]
quantity = "power_kw"
address = 0x40_1E
function = 3
type = "i32"
word_order = "DCBA"
scale = 1e-3

[[register]]
quantity = "frequency_hz"
address = 7
scale = 1
"#;
        let m = parse(text, "t").unwrap().model;
        assert_eq!((m.max_block, m.max_gap), (50, 4));
        assert_eq!((m.unit_switch_pause_ms, m.inter_frame_pause_ms), (20, 5));
        let p = &m.registers[0];
        assert_eq!((p.function, p.address), (3, 0x401E));
        assert_eq!(
            (p.data_type, p.word_order, p.scale),
            (DataType::I32, WordOrder::Dcba, 0.001)
        );
        let f = &m.registers[1];
        assert_eq!(
            (f.function, f.data_type, f.word_order),
            (4, DataType::F32, WordOrder::Cdab)
        );
    }

    #[test]
    fn every_problem_is_reported_at_its_line() {
        let text = r#"
[model]
name = "x"
phases = 3
fucntion = 4
type = "f32"
max_block = 0

[[register]]
quantity = "voltage_l1"
address = 0

[[register]]
quantity = "energy_import_kwh"
address = 1
scale = 0.0
function = 4

[[register]]
address = 65535
quantity = "power_kw"
function = 4

[[register]]
quantity = "frequency_hz"
address = 8
type = "float"
word_order = "xyz"
function = 5
scael = 2
"#;
        let e = errors(text);
        assert_error(
            &e,
            5,
            1,
            "unknown key `fucntion` in [model]; did you mean `function`?",
        );
        assert_error(&e, 7, 13, "max_block = 0 is out of range");
        assert_error(&e, 9, 1, "no function code");
        assert_error(
            &e,
            10,
            12,
            "unknown quantity \"voltage_l1\"; closest valid names: \"voltage_l1_v\"",
        );
        assert_error(&e, 16, 9, "scale = 0 is not usable");
        assert_error(&e, 20, 11, "runs past the last register address 65535");
        assert_error(&e, 27, 8, "unknown data type \"float\"; use one of \"u16\"");
        assert_error(&e, 28, 14, "unknown word order \"xyz\"");
        assert_error(&e, 29, 12, "function 5 is not supported; use 3");
        assert_error(&e, 30, 1, "did you mean `scale`?");
        assert_eq!(e.len(), 10, "{e:?}");
        assert!(e.iter().all(|e| e.file == "test.toml"));
        let mut sorted = e.clone();
        sorted.sort_by_key(|e| (e.line, e.col));
        assert_eq!(e, sorted, "errors come in file order");
    }

    #[test]
    fn overlapping_registers_name_both_quantities() {
        let text = r#"
[model]
name = "x"
phases = 1
function = 3
type = "u32"

[[register]]
quantity = "energy_import_kwh"
address = 0x5000
type = "u64"

[[register]]
quantity = "energy_export_kwh"
address = 0x5002

[[register]]
quantity = "power_kw"
address = 0x5002
function = 4
"#;
        let e = errors(text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_error(
            &e,
            15,
            11,
            "\"energy_export_kwh\" (function 3, registers 0x5002..0x5003) overlaps \
             \"energy_import_kwh\" (line 10, registers 0x5000..0x5003)",
        );
    }

    #[test]
    fn a_quantity_mapped_twice_is_reported_with_the_other_line() {
        let text =
            format!("{MINIMAL}\n[[register]]\nquantity = \"energy_import_kwh\"\naddress = 0x100\n");
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_error(
            &e,
            13,
            12,
            "quantity \"energy_import_kwh\" is mapped twice (also at line 9)",
        );
    }

    #[test]
    fn missing_parts_are_named() {
        let e = errors("[model]\nvendor = 3\n");
        assert_error(&e, 1, 2, "[model] has no `name`");
        assert_error(&e, 1, 2, "[model] has no `phases`");
        assert_error(
            &e,
            2,
            10,
            "`vendor` must be a string in quotes; found integer",
        );
        assert_error(&e, 1, 2, "the model has no registers");

        let e = errors("[[register]]\nquantity = \"power_kw\"\n");
        assert_error(&e, 1, 1, "there is no [model] section");

        let e = errors(
            "[model]\nname = \"m\"\nphases = 2\nfunction = 3\ntype = \"u16\"\n[[register]]\nquantity = \"power_kw\"\n[[register]]\naddress = \"0x10\"\n",
        );
        assert_error(&e, 3, 10, "phases = 2 is not possible");
        assert_error(&e, 6, 1, "[[register]] for \"power_kw\" has no `address`");
        assert_error(&e, 8, 1, "[[register]] has no `quantity`");
        assert_error(
            &e,
            9,
            11,
            "`address` must be an integer (a zero-based register address); found string",
        );

        let e = errors("[model]\nname = \"m\"\nphases = 1\nregister = 5\n");
        assert_error(&e, 4, 1, "unknown key `register` in [model]");
    }

    #[test]
    fn invalid_toml_points_at_the_syntax_error() {
        let e = errors("[model]\nname = \"m\nphases = 1\n");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, 2, "{e:?}");
        assert!(e[0].message.starts_with("this is not valid TOML"), "{e:?}");
    }

    #[test]
    fn register_must_be_an_array_of_tables() {
        let e = errors("register = 1\n[model]\nname = \"m\"\nphases = 1\n");
        assert_error(&e, 1, 12, "`register` must be a list of tables");
    }

    const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/protocols/README.md"));

    #[test]
    fn the_readme_example_is_a_valid_model() {
        let start = README.find("```toml\n").expect("README has a toml example") + 8;
        let end = start + README[start..].find("```").unwrap();
        let m = parse(&README[start..end], "README.md").unwrap().model;
        assert_eq!(m.name, "example-em1");
        assert_eq!(m.registers.len(), 3);
    }

    #[test]
    fn the_readme_lists_every_quantity() {
        for q in QUANTITIES {
            assert!(
                README.contains(&format!("- `{q}`")),
                "protocols/README.md lacks {q}"
            );
        }
    }
}
