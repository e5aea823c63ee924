//! DL/T 645 meter models as data (`protocols/dlt645-*.toml`): data-identifier maps — which DI
//! holds which quantity, in which BCD format, with which sign, unit and scale — and the block
//! identifiers that read several items in one exchange, with their single-DI fallbacks.
//! Reading and validating a file (every problem at FILE:LINE:COL), planning the reads of a
//! meter, and decoding (and, for the simulator, encoding) the value bytes of a read.
//!
//! A file is told from a Modbus model by `protocol = "dlt645"` in its `[model]` section
//! ([`declares_dlt645`]); the format is described in `protocols/README.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::library::ModelError;
use crate::diagnostic::line_col;
use crate::model::is_quantity;
use crate::protocol::dlt645::codec::{self, BcdError, DataId, Version};

/// Names a DL/T 645 model may map besides the contract's quantities: meter items the gateway
/// reads for its own use (clock, status words, event counters, prepaid balances) or does not
/// publish (combined energy, export tariffs, per-phase power factor).
pub const ITEMS: &[&str] = &[
    "energy_combined_kwh",
    "energy_export_t1_kwh",
    "energy_export_t2_kwh",
    "energy_export_t3_kwh",
    "energy_export_t4_kwh",
    "power_factor_l1",
    "power_factor_l2",
    "power_factor_l3",
    "meter_date",
    "meter_time",
    "status_word_1",
    "status_word_2",
    "status_word_3",
    "status_word_4",
    "status_word_5",
    "status_word_6",
    "status_word_7",
    "power_down_count",
    "cover_open_count",
    "voltage_loss_count",
    "remaining_energy_kwh",
    "remaining_money",
    "ct_ratio",
    "pt_ratio",
];

/// Units a data identifier's value may be in, as the standard's tables write them.
const UNITS: &[&str] = &[
    "", "kWh", "kvarh", "V", "A", "kW", "kvar", "kVA", "Hz", "yuan", "count",
];

/// How the value bytes of one data identifier are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueFormat {
    /// BCD, least significant byte first (`XXXXXX.XX`: 4 bytes, 2 decimals); with `signed`
    /// the top bit of the most significant byte is the sign.
    Bcd {
        len: usize,
        decimals: u8,
        signed: bool,
    },
    /// `YYMMDDWW`: date and weekday (4 bytes BCD).
    Date,
    /// `hhmmss` (3 bytes BCD).
    Time,
    /// `YYMMDDhhmm` (5 bytes BCD).
    Timestamp,
    /// A bit field of `len` bytes, least significant byte first (status words).
    Bits { len: usize },
}

impl ValueFormat {
    /// Bytes the value takes.
    pub fn len(&self) -> usize {
        match self {
            ValueFormat::Bcd { len, .. } | ValueFormat::Bits { len } => *len,
            ValueFormat::Date => 4,
            ValueFormat::Time => 3,
            ValueFormat::Timestamp => 5,
        }
    }

    /// Never true: every format has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses a format as the standard's tables write it: `XXXXXX.XX`, `XXX.XXX`, `XXXX`,
    /// `YYMMDDWW`, `hhmmss`, `YYMMDDhhmm`, `bits8` / `bits16` / `bits32`.
    fn parse(text: &str, signed: bool) -> Option<ValueFormat> {
        match text {
            "YYMMDDWW" => return Some(ValueFormat::Date),
            "hhmmss" => return Some(ValueFormat::Time),
            "YYMMDDhhmm" => return Some(ValueFormat::Timestamp),
            "bits8" => return Some(ValueFormat::Bits { len: 1 }),
            "bits16" => return Some(ValueFormat::Bits { len: 2 }),
            "bits32" => return Some(ValueFormat::Bits { len: 4 }),
            _ => {}
        }
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        let digits = int.len() + frac.len();
        let ok = !int.is_empty()
            && int.bytes().chain(frac.bytes()).all(|b| b == b'X')
            && (1..=16).contains(&digits);
        ok.then_some(ValueFormat::Bcd {
            // `XXX` (a 1997 voltage) takes two bytes, its top digit unused.
            len: digits.div_ceil(2),
            decimals: frac.len() as u8,
            signed,
        })
    }
}

/// A value decoded from a read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DiValue {
    /// A number in the entry's target unit (BCD × scale).
    Number(f64),
    /// `YYMMDDWW`: the year is 2000 + YY; weekday 0 = Sunday.
    Date {
        year: u16,
        month: u8,
        day: u8,
        weekday: u8,
    },
    Time {
        hour: u8,
        minute: u8,
        second: u8,
    },
    Timestamp {
        year: u16,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
    },
    Bits(u32),
}

/// One data identifier of a model and the name its value goes by.
#[derive(Debug, Clone, PartialEq)]
pub struct DiEntry {
    pub di: DataId,
    /// A contract quantity (published) or one of [`ITEMS`] (for the gateway's own use).
    pub name: String,
    pub format: ValueFormat,
    /// The meter's unit for the value, as its table writes it (documentation; checked against
    /// the quantity's unit with `scale`).
    pub unit: String,
    /// Value = BCD number × scale (e.g. 0.001 for W → kW).
    pub scale: f64,
}

impl DiEntry {
    /// True when the name is a contract quantity (published in readings).
    pub fn is_quantity(&self) -> bool {
        is_quantity(&self.name)
    }
}

/// A block identifier: one read returning its items' values one after the other.
#[derive(Debug, Clone, PartialEq)]
pub struct DiBlock {
    pub di: DataId,
    /// The single identifiers it stands for, in the order of their values in the reply; each
    /// is an entry of the model. They are read one by one when the meter refuses the block.
    pub items: Vec<DataId>,
}

/// One read of a plan: a block identifier (with its items) or a single identifier.
#[derive(Debug, Clone, PartialEq)]
pub struct DiRead {
    /// The identifier sent.
    pub di: DataId,
    /// The entries its value holds, in order (one for a single identifier).
    pub items: Vec<DataId>,
}

impl DiRead {
    /// True for a block identifier.
    pub fn is_block(&self) -> bool {
        self.items.len() != 1 || self.items[0] != self.di
    }

    /// The single-identifier reads that replace this one when the meter answers "no such data
    /// item" (itself, for a single identifier).
    pub fn fallback(&self) -> Vec<DiRead> {
        self.items
            .iter()
            .map(|&di| DiRead {
                di,
                items: vec![di],
            })
            .collect()
    }
}

/// Why the value bytes of a read cannot be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    #[error("{di}: {source}")]
    Bcd { di: DataId, source: BcdError },
    #[error("{di}: {got} value bytes, expected {expected}")]
    Length {
        di: DataId,
        expected: usize,
        got: usize,
    },
    #[error("{0}: not in the model")]
    Unknown(DataId),
}

/// A DL/T 645 meter model: its edition and data-identifier map.
#[derive(Debug, Clone, PartialEq)]
pub struct Dlt645Model {
    /// Name used in `[[meter]] model`, e.g. `dlt645-2007`.
    pub name: String,
    pub vendor: String,
    pub description: String,
    pub version: Version,
    /// 1 or 3.
    pub phases: u8,
    pub entries: Vec<DiEntry>,
    pub blocks: Vec<DiBlock>,
    /// File the model came from (`builtin:protocols/x.toml` for compiled-in ones).
    pub source: String,
}

impl Dlt645Model {
    /// The entry of a single identifier.
    pub fn entry(&self, di: DataId) -> Option<&DiEntry> {
        self.entries.iter().find(|e| e.di == di)
    }

    /// The entry whose value goes by `name`.
    pub fn entry_named(&self, name: &str) -> Option<&DiEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// The block with identifier `di`.
    pub fn block(&self, di: DataId) -> Option<&DiBlock> {
        self.blocks.iter().find(|b| b.di == di)
    }

    /// The reads that cover every entry: with `use_blocks`, each block in file order, then
    /// every entry no block covers; without (a meter that refuses blocks), every entry alone.
    /// `refused` lists blocks this meter answered "no such data item": their items are read
    /// one by one.
    pub fn plan(&self, use_blocks: bool, refused: &BTreeSet<DataId>) -> Vec<DiRead> {
        let mut reads = Vec::new();
        let mut covered = BTreeSet::new();
        if use_blocks {
            for b in self.blocks.iter().filter(|b| !refused.contains(&b.di)) {
                if b.items.iter().all(|i| covered.contains(i)) {
                    continue;
                }
                covered.extend(b.items.iter().copied());
                reads.push(DiRead {
                    di: b.di,
                    items: b.items.clone(),
                });
            }
        }
        for e in self.entries.iter().filter(|e| !covered.contains(&e.di)) {
            reads.push(DiRead {
                di: e.di,
                items: vec![e.di],
            });
        }
        reads
    }

    /// Decodes the value bytes of `read` into `(entry, value)` pairs, in the order of its
    /// items. Bytes beyond the items' lengths are ignored (some meters pad blocks).
    pub fn decode<'m>(
        &'m self,
        read: &DiRead,
        value: &[u8],
    ) -> Result<Vec<(&'m DiEntry, DiValue)>, ValueError> {
        let mut out = Vec::with_capacity(read.items.len());
        let mut at = 0;
        for &di in &read.items {
            let entry = self.entry(di).ok_or(ValueError::Unknown(di))?;
            let n = entry.format.len();
            let Some(bytes) = value.get(at..at + n) else {
                return Err(ValueError::Length {
                    di: read.di,
                    expected: read
                        .items
                        .iter()
                        .filter_map(|d| self.entry(*d))
                        .map(|e| e.format.len())
                        .sum(),
                    got: value.len(),
                });
            };
            out.push((entry, decode_value(entry, bytes)?));
            at += n;
        }
        Ok(out)
    }

    /// The value bytes of a read of `di` (single or block), each entry's value taken from
    /// `value_of`; `None` for an identifier the model lacks. For the simulator.
    pub fn encode(&self, di: DataId, value_of: impl Fn(&DiEntry) -> DiValue) -> Option<Vec<u8>> {
        let items: Vec<DataId> = match self.block(di) {
            Some(b) => b.items.clone(),
            None => vec![self.entry(di)?.di],
        };
        let mut out = Vec::new();
        for d in items {
            let entry = self.entry(d)?;
            out.extend(encode_value(entry, &value_of(entry)));
        }
        Some(out)
    }
}

/// The value of one entry from its bytes.
pub fn decode_value(entry: &DiEntry, bytes: &[u8]) -> Result<DiValue, ValueError> {
    let di = entry.di;
    let bcd = |e| ValueError::Bcd { di, source: e };
    if bytes.len() != entry.format.len() {
        return Err(ValueError::Length {
            di,
            expected: entry.format.len(),
            got: bytes.len(),
        });
    }
    let two = |k: usize| -> Result<u8, ValueError> {
        Ok(codec::decode_bcd(&bytes[k..k + 1], 0, false).map_err(bcd)? as u8)
    };
    Ok(match entry.format {
        ValueFormat::Bcd {
            decimals, signed, ..
        } => {
            DiValue::Number(codec::decode_bcd(bytes, decimals, signed).map_err(bcd)? * entry.scale)
        }
        ValueFormat::Date => DiValue::Date {
            weekday: two(0)?,
            day: two(1)?,
            month: two(2)?,
            year: 2000 + u16::from(two(3)?),
        },
        ValueFormat::Time => DiValue::Time {
            second: two(0)?,
            minute: two(1)?,
            hour: two(2)?,
        },
        ValueFormat::Timestamp => DiValue::Timestamp {
            minute: two(0)?,
            hour: two(1)?,
            day: two(2)?,
            month: two(3)?,
            year: 2000 + u16::from(two(4)?),
        },
        ValueFormat::Bits { .. } => DiValue::Bits(
            bytes
                .iter()
                .rev()
                .fold(0u32, |a, b| (a << 8) | u32::from(*b)),
        ),
    })
}

/// The bytes of one entry's value (the inverse of [`decode_value`]); a value of the wrong
/// kind for the format encodes as zeros.
pub fn encode_value(entry: &DiEntry, value: &DiValue) -> Vec<u8> {
    let b = |n: u8| codec::encode_bcd(f64::from(n), 1, 0, false)[0];
    let yy = |y: u16| b((y % 100) as u8);
    match (entry.format, value) {
        (
            ValueFormat::Bcd {
                len,
                decimals,
                signed,
            },
            DiValue::Number(v),
        ) => codec::encode_bcd(v / entry.scale, len, decimals, signed),
        (
            ValueFormat::Date,
            DiValue::Date {
                year,
                month,
                day,
                weekday,
            },
        ) => vec![b(*weekday), b(*day), b(*month), yy(*year)],
        (
            ValueFormat::Time,
            DiValue::Time {
                hour,
                minute,
                second,
            },
        ) => vec![b(*second), b(*minute), b(*hour)],
        (
            ValueFormat::Timestamp,
            DiValue::Timestamp {
                year,
                month,
                day,
                hour,
                minute,
            },
        ) => vec![b(*minute), b(*hour), b(*day), b(*month), yy(*year)],
        (ValueFormat::Bits { len }, DiValue::Bits(bits)) => bits.to_le_bytes()[..len].to_vec(),
        (format, _) => vec![0; format.len()],
    }
}

/// True when `text` is a DL/T 645 model: its `[model]` says `protocol = "dlt645"`. The model
/// loader dispatches on it.
pub fn declares_dlt645(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        model: Option<ProbeModel>,
    }
    #[derive(Deserialize)]
    struct ProbeModel {
        protocol: Option<String>,
    }
    toml::from_str::<Probe>(text)
        .ok()
        .and_then(|p| p.model)
        .and_then(|m| m.protocol)
        .is_some_and(|p| p == "dlt645")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    model: Spanned<ModelSection>,
    #[serde(default)]
    di: Vec<Spanned<DiFile>>,
    #[serde(default)]
    block: Vec<Spanned<BlockFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelSection {
    name: Spanned<String>,
    protocol: Spanned<String>,
    version: Spanned<String>,
    #[serde(default)]
    vendor: String,
    #[serde(default)]
    description: String,
    phases: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiFile {
    di: Spanned<String>,
    quantity: Option<Spanned<String>>,
    item: Option<Spanned<String>>,
    format: Spanned<String>,
    #[serde(default)]
    signed: bool,
    #[serde(default)]
    unit: Option<Spanned<String>>,
    scale: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockFile {
    di: Spanned<String>,
    items: Spanned<Vec<Spanned<String>>>,
}

/// The checks of one file: its text (for line numbers), its name and the problems found.
struct FileCheck<'t> {
    text: &'t str,
    source: &'t str,
    errors: Vec<ModelError>,
}

impl FileCheck<'_> {
    fn error(&mut self, span: Range<usize>, message: String) {
        let (line, col) = line_col(self.text, span.start);
        self.errors.push(ModelError {
            file: self.source.to_string(),
            line,
            col,
            message,
        });
    }

    fn di(&mut self, text: &Spanned<String>, version: Version) -> Option<DataId> {
        let want = match version {
            Version::V2007 => "8 hex digits, e.g. \"00010000\"",
            Version::V1997 => "4 hex digits, e.g. \"9010\"",
        };
        match DataId::parse(text.get_ref()) {
            Some(di) if di.version() == version => Some(di),
            _ => {
                self.error(
                    text.span(),
                    format!(
                        "data identifier \"{}\" is not a DL/T 645-{} identifier; write {want}",
                        text.get_ref(),
                        version.name()
                    ),
                );
                None
            }
        }
    }
}

/// The unit a contract quantity is in, from its name's suffix.
fn quantity_unit(name: &str) -> &'static str {
    let suffixes = [
        ("_kwh", "kWh"),
        ("_kvarh", "kvarh"),
        ("_kvar", "kvar"),
        ("_kva", "kVA"),
        ("_kw", "kW"),
        ("_v", "V"),
        ("_a", "A"),
        ("_hz", "Hz"),
    ];
    suffixes
        .iter()
        .find(|(s, _)| name.ends_with(s))
        .map_or("", |(_, u)| u)
}

/// Parses and validates one DL/T 645 model file's text; `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<Dlt645Model, Vec<ModelError>> {
    let mut file = FileCheck {
        text,
        source,
        errors: Vec::new(),
    };
    let doc: FileDoc = match toml::from_str(text) {
        Ok(doc) => doc,
        Err(e) => {
            let at = e.span().map_or(0..0, |s| s);
            let first = e.message().lines().next().unwrap_or("").trim().to_string();
            file.error(at, format!("{first} (see protocols/README.md)"));
            return Err(file.errors);
        }
    };
    let m = doc.model.get_ref();
    if m.protocol.get_ref() != "dlt645" {
        file.error(
            m.protocol.span(),
            format!(
                "protocol \"{}\" in a DL/T 645 model; write protocol = \"dlt645\"",
                m.protocol.get_ref()
            ),
        );
    }
    let version = match m.version.get_ref().as_str() {
        "2007" => Version::V2007,
        "1997" => Version::V1997,
        other => {
            file.error(
                m.version.span(),
                format!("version \"{other}\" is not a DL/T 645 edition; use \"2007\" or \"1997\""),
            );
            return Err(file.errors);
        }
    };
    let name = m.name.get_ref();
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '/') {
        file.error(
            m.name.span(),
            format!("model name \"{name}\" must be a non-empty word without spaces or '/'"),
        );
    }
    if ![1, 3].contains(m.phases.get_ref()) {
        file.error(
            m.phases.span(),
            format!(
                "phases = {} is not possible; use 1 (single-phase) or 3 (three-phase)",
                m.phases.get_ref()
            ),
        );
    }
    if doc.di.is_empty() {
        file.error(
            doc.model.span(),
            "the model maps no data identifier; add [[di]] sections with di, quantity (or \
             item) and format"
                .into(),
        );
    }
    let mut entries: Vec<DiEntry> = Vec::new();
    let mut seen_di: BTreeMap<DataId, usize> = BTreeMap::new();
    let mut seen_name: BTreeMap<String, usize> = BTreeMap::new();
    for d in &doc.di {
        let at = d.span();
        let d = d.get_ref();
        let di = file.di(&d.di, version);
        let name = match (&d.quantity, &d.item) {
            (Some(q), None) => {
                if is_quantity(q.get_ref()) {
                    Some((q.get_ref().clone(), q.span()))
                } else {
                    file.error(
                        q.span(),
                        format!(
                            "unknown quantity \"{}\"; the names are listed in \
                             protocols/README.md{}",
                            q.get_ref(),
                            if ITEMS.contains(&q.get_ref().as_str()) {
                                "; this one is a meter item: write item = \"...\""
                            } else {
                                ""
                            }
                        ),
                    );
                    None
                }
            }
            (None, Some(i)) => {
                if ITEMS.contains(&i.get_ref().as_str()) {
                    Some((i.get_ref().clone(), i.span()))
                } else {
                    file.error(
                        i.span(),
                        format!(
                            "unknown item \"{}\"; items are: {}",
                            i.get_ref(),
                            ITEMS.join(", ")
                        ),
                    );
                    None
                }
            }
            (Some(q), Some(_)) => {
                file.error(
                    q.span(),
                    "a [[di]] has either `quantity` (published) or `item`, not both".into(),
                );
                None
            }
            (None, None) => {
                file.error(
                    at.clone(),
                    "this [[di]] has neither `quantity` nor `item`; add quantity = \"...\"".into(),
                );
                None
            }
        };
        let format = ValueFormat::parse(d.format.get_ref(), d.signed);
        if format.is_none() {
            file.error(
                d.format.span(),
                format!(
                    "format \"{}\" is not known; write it as the standard's table does: \
                     \"XXXXXX.XX\" (one X a digit, a point before the decimals), \
                     \"YYMMDDWW\", \"hhmmss\", \"YYMMDDhhmm\", \"bits8\", \"bits16\" or \
                     \"bits32\"",
                    d.format.get_ref()
                ),
            );
        }
        let unit = d
            .unit
            .as_ref()
            .map_or("", |u| u.get_ref().as_str())
            .to_string();
        if let Some(u) = &d.unit
            && !UNITS.contains(&u.get_ref().as_str())
        {
            file.error(
                u.span(),
                format!(
                    "unit \"{}\" is not known; use one of: {}",
                    u.get_ref(),
                    UNITS[1..].join(", ")
                ),
            );
        }
        let scale = d.scale.as_ref().map_or(1.0, |s| *s.get_ref());
        if let Some(s) = &d.scale
            && !(scale.is_finite() && scale != 0.0)
        {
            file.error(
                s.span(),
                "scale must be a finite number other than 0".into(),
            );
        }
        if let (Some((n, _)), Some(u)) = (&name, &d.unit) {
            let want = quantity_unit(n);
            if is_quantity(n) && scale == 1.0 && !want.is_empty() && u.get_ref() != want {
                file.error(
                    u.span(),
                    format!(
                        "the meter gives {} in {}, but {n} is in {want}; set scale to convert \
                         (e.g. 0.001 for W to kW)",
                        d.di.get_ref(),
                        u.get_ref()
                    ),
                );
            }
        }
        let (Some(di), Some((name, name_span)), Some(format)) = (di, name, format) else {
            continue;
        };
        if let Some(line) = seen_di.insert(di, line_col(text, d.di.span().start).0) {
            file.error(
                d.di.span(),
                format!("data identifier {di} is mapped twice (first on line {line})"),
            );
        }
        if let Some(line) = seen_name.insert(name.clone(), line_col(text, name_span.start).0) {
            file.error(
                name_span,
                format!("\"{name}\" is mapped twice (first on line {line})"),
            );
        }
        entries.push(DiEntry {
            di,
            name,
            format,
            unit,
            scale,
        });
    }
    let mut blocks = Vec::new();
    for b in &doc.block {
        let b = b.get_ref();
        let di = file.di(&b.di, version);
        let mut items = Vec::new();
        for i in b.items.get_ref() {
            if let Some(item) = file.di(i, version) {
                if entries.iter().any(|e| e.di == item) {
                    items.push(item);
                } else {
                    file.error(
                        i.span(),
                        format!(
                            "block item {item} has no [[di]] of its own; map it, so that it \
                             can be read alone when the meter refuses the block"
                        ),
                    );
                }
            }
        }
        if b.items.get_ref().is_empty() {
            file.error(b.items.span(), "a block needs at least one item".into());
        }
        if let Some(di) = di {
            if seen_di.contains_key(&di) {
                file.error(
                    b.di.span(),
                    format!("{di} is both a block and a single identifier"),
                );
            }
            let len: usize = items
                .iter()
                .filter_map(|i| entries.iter().find(|e| e.di == *i))
                .map(|e| e.format.len())
                .sum();
            if len > codec::MAX_READ_REPLY_DATA - di.len() {
                file.error(
                    b.items.span(),
                    format!("block {di} holds {len} value bytes, more than one reply carries"),
                );
            }
            blocks.push(DiBlock { di, items });
        }
    }
    if !file.errors.is_empty() {
        file.errors.sort_by_key(|e| (e.line, e.col));
        return Err(file.errors);
    }
    Ok(Dlt645Model {
        name: name.clone(),
        vendor: m.vendor.clone(),
        description: m.description.clone(),
        version,
        phases: *m.phases.get_ref() as u8,
        entries,
        blocks,
        source: source.to_string(),
    })
}

/// `(source, text)` of every built-in DL/T 645 model file.
pub const BUILTIN_DLT645_FILES: &[(&str, &str)] = &[
    (
        "builtin:protocols/dlt645-1997.toml",
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/protocols/dlt645-1997.toml"
        )),
    ),
    (
        "builtin:protocols/dlt645-2007.toml",
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/protocols/dlt645-2007.toml"
        )),
    ),
];

/// The built-in DL/T 645 models, by name.
///
/// # Panics
///
/// When a built-in file fails validation: a bug in this program, caught by the unit test.
pub fn builtin() -> BTreeMap<String, Dlt645Model> {
    let mut models = BTreeMap::new();
    for (source, text) in BUILTIN_DLT645_FILES {
        match parse(text, source) {
            Ok(m) => {
                models.insert(m.name.clone(), m);
            }
            Err(e) => {
                let list: Vec<String> = e.iter().map(ToString::to_string).collect();
                panic!("built-in DL/T 645 models are invalid:\n{}", list.join("\n"));
            }
        }
    }
    models
}

#[cfg(test)]
mod tests {
    use super::*;

    fn di(s: &str) -> DataId {
        DataId::parse(s).unwrap()
    }

    #[test]
    fn the_builtin_models_load_with_their_blocks_and_fallbacks() {
        let models = builtin();
        let m7 = &models["dlt645-2007"];
        assert_eq!(m7.version, Version::V2007);
        for q in [
            "energy_import_kwh",
            "energy_import_t1_kwh",
            "energy_import_t4_kwh",
            "energy_export_kwh",
            "voltage_l1_v",
            "current_l3_a",
            "power_kw",
            "reactive_power_kvar",
            "apparent_power_kva",
            "power_factor",
            "frequency_hz",
            "meter_date",
            "meter_time",
            "status_word_1",
            "power_down_count",
            "cover_open_count",
            "remaining_energy_kwh",
            "remaining_money",
            "energy_combined_kwh",
        ] {
            assert!(m7.entry_named(q).is_some(), "2007 lacks {q}");
        }
        for b in ["0001FF00", "0201FF00", "0202FF00"] {
            assert!(m7.block(di(b)).is_some(), "2007 lacks block {b}");
        }
        let m9 = &models["dlt645-1997"];
        assert_eq!(m9.version, Version::V1997);
        for q in [
            "energy_import_kwh",
            "energy_import_t4_kwh",
            "voltage_l1_v",
            "current_l1_a",
            "power_kw",
            "meter_date",
            "meter_time",
        ] {
            assert!(m9.entry_named(q).is_some(), "1997 lacks {q}");
        }
        // Every entry is read exactly once, with or without blocks.
        for m in [m7, m9] {
            for blocks in [true, false] {
                let plan = m.plan(blocks, &BTreeSet::new());
                let mut read: Vec<DataId> = plan.iter().flat_map(|r| r.items.clone()).collect();
                read.sort();
                let mut all: Vec<DataId> = m.entries.iter().map(|e| e.di).collect();
                all.sort();
                assert_eq!(read, all, "{} blocks {blocks}", m.name);
            }
            assert!(
                m.plan(false, &BTreeSet::new())
                    .iter()
                    .all(|r| !r.is_block())
            );
        }
        let with_blocks = m7.plan(true, &BTreeSet::new());
        let energy = with_blocks.iter().find(|r| r.di == di("0001FF00")).unwrap();
        assert!(energy.is_block());
        assert_eq!(energy.fallback().len(), 5);
        // A refused block is read item by item, the others stay blocks.
        let refused = BTreeSet::from([di("0001FF00")]);
        let plan = m7.plan(true, &refused);
        assert!(plan.iter().all(|r| r.di != di("0001FF00")));
        assert!(plan.iter().any(|r| r.di == di("00010100")));
        assert!(plan.iter().any(|r| r.di == di("0201FF00")));
    }

    #[test]
    fn block_values_round_trip() {
        let models = builtin();
        let m = &models["dlt645-2007"];
        let value_of = |e: &DiEntry| match e.name.as_str() {
            "meter_date" => DiValue::Date {
                year: 2026,
                month: 11,
                day: 29,
                weekday: 0,
            },
            "current_l2_a" => DiValue::Number(-1.5),
            n if n.ends_with("_count") || n.starts_with("voltage_l") => DiValue::Number(3.0),
            _ => DiValue::Number(1.5),
        };
        for read in m.plan(true, &BTreeSet::new()) {
            let bytes = m.encode(read.di, value_of).unwrap();
            for (entry, v) in m.decode(&read, &bytes).unwrap() {
                let want = match entry.format {
                    ValueFormat::Bits { .. } | ValueFormat::Time | ValueFormat::Timestamp => {
                        continue;
                    }
                    _ => value_of(entry),
                };
                assert_eq!(v, want, "{}", entry.name);
            }
        }
        let read = DiRead {
            di: di("0201FF00"),
            items: m.block(di("0201FF00")).unwrap().items.clone(),
        };
        // 220.1 V, 230.0 V, 239.9 V as the wire carries them (after the offset).
        let v = m
            .decode(&read, &[0x01, 0x22, 0x00, 0x23, 0x99, 0x23])
            .unwrap();
        let volts: Vec<DiValue> = v.into_iter().map(|(_, v)| v).collect();
        assert_eq!(
            volts,
            vec![
                DiValue::Number(220.1),
                DiValue::Number(230.0),
                DiValue::Number(239.9)
            ]
        );
        assert!(matches!(
            m.decode(&read, &[0x01, 0x22]),
            Err(ValueError::Length { .. })
        ));
    }

    #[test]
    fn errors_point_at_the_line_and_column() {
        let head = "[model]\nname = \"x\"\nprotocol = \"dlt645\"\nversion = \"2007\"\nphases = 1\n";
        let check = |body: &str| -> Vec<String> {
            parse(&format!("{head}{body}"), "x.toml")
                .unwrap_err()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        let e = check("[[di]]\ndi = \"9010\"\nquantity = \"power_kw\"\nformat = \"XX.XXXX\"\n");
        assert!(
            e[0].starts_with("x.toml:7:6: data identifier \"9010\""),
            "{e:?}"
        );
        let e = check("[[di]]\ndi = \"02030000\"\nquantity = \"power_kx\"\nformat = \"XX.XXXX\"\n");
        assert!(e[0].starts_with("x.toml:8:12: unknown quantity"), "{e:?}");
        let e = check("[[di]]\ndi = \"02030000\"\nquantity = \"power_kw\"\nformat = \"XX.XXY\"\n");
        assert!(e[0].starts_with("x.toml:9:10: format"), "{e:?}");
        let e = check(
            "[[di]]\ndi = \"02030000\"\nquantity = \"power_kw\"\nformat = \"XX.XXXX\"\nunit = \"W\"\n",
        );
        assert!(e[0].contains("unit \"W\" is not known"), "{e:?}");
        let e = check(
            "[[di]]\ndi = \"02030000\"\nquantity = \"power_kw\"\nformat = \"XX.XXXX\"\n\
             [[block]]\ndi = \"0203FF00\"\nitems = [\"02030000\", \"02030100\"]\n",
        );
        assert!(
            e[0].starts_with("x.toml:12:22: block item 02030100 has no [[di]]"),
            "{e:?}"
        );
        let e = check(
            "[[di]]\ndi = \"02030000\"\nquantity = \"power_kw\"\nformat = \"XX.XXXX\"\nbogus = 1\n",
        );
        assert!(
            e[0].starts_with("x.toml:") && e[0].contains("bogus"),
            "{e:?}"
        );
        let e = check(
            "[[di]]\ndi = \"02030000\"\nquantity = \"power_kw\"\nformat = \"XX.XXXX\"\n\
             [[di]]\ndi = \"02030000\"\nquantity = \"power_l1_kw\"\nformat = \"XX.XXXX\"\n",
        );
        assert!(e[0].contains("mapped twice"), "{e:?}");
        assert!(declares_dlt645(head));
        assert!(!declares_dlt645("[model]\nname = \"m\"\n"));
    }
}
