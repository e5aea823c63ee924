//! Model files: parsing, validation (with file and line in every error), and the library.

/// Value encoding of one register entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    U16,
    I16,
    U32,
    I32,
    F32,
    U64,
    F64,
}

impl DataType {
    /// Number of 16-bit registers the value occupies.
    pub fn words(self) -> u16 {
        match self {
            DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::F64 => 4,
        }
    }
}

/// Order of the bytes of a multi-register value, as letters of the big-endian value `ABCD`.
/// `Abcd`: high word first, big-endian bytes (Modbus convention). `Cdab`: low word first.
/// `Badc`: high word first, bytes swapped in each word. `Dcba`: fully little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WordOrder {
    Abcd,
    Cdab,
    Badc,
    Dcba,
}

/// One quantity in a model: where it lives and how to turn it into the canonical unit.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterDef {
    /// Contract quantity name, e.g. `energy_import_kwh`.
    pub quantity: String,
    /// 3 (holding) or 4 (input).
    pub function: u8,
    /// Zero-based register address (PDU address).
    pub address: u16,
    pub data_type: DataType,
    pub word_order: WordOrder,
    /// Canonical value = raw × scale (e.g. 0.01 for a register in 10 Wh, 0.001 for W → kW).
    pub scale: f64,
}

/// A meter model: its register map and the limits of its Modbus implementation.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterModel {
    /// Name used in `[[meter]] model`, e.g. `eastron-sdm630`.
    pub name: String,
    pub vendor: String,
    pub description: String,
    /// `"1"` (single-phase) or `"3"` (three-phase).
    pub phases: u8,
    /// Most registers one request may read (default 125; many meters accept fewer).
    pub max_block: u16,
    /// Largest gap of unmapped registers a block may read across (default 0 = contiguous only;
    /// some meters raise exception 02 on unmapped registers).
    pub max_gap: u16,
    /// Pause before talking to this meter after the bus talked to another unit id.
    pub unit_switch_pause_ms: u64,
    /// Pause between two frames to this meter.
    pub inter_frame_pause_ms: u64,
    pub registers: Vec<RegisterDef>,
    /// File the model came from (`builtin:protocols/x.toml` for compiled-in ones).
    pub source: String,
}

/// A problem in a model file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}:{col}: {message}")]
pub struct ModelError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// All models available to a configuration, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelLibrary {
    pub models: std::collections::BTreeMap<String, MeterModel>,
}

impl ModelLibrary {
    /// The models compiled in from `protocols/*.toml`.
    pub fn builtin() -> ModelLibrary {
        todo!("builtin library")
    }

    /// Adds (or replaces, by name) every `*.toml` model in `dir`. Returns every problem found,
    /// each naming the file and line.
    pub fn load_dir(&mut self, _dir: &std::path::Path) -> Result<(), Vec<ModelError>> {
        todo!("load_dir")
    }

    /// Parses and validates one model file's text (`source` names it in errors).
    pub fn parse_model(_text: &str, _source: &str) -> Result<MeterModel, Vec<ModelError>> {
        todo!("parse_model")
    }

    pub fn get(&self, name: &str) -> Option<&MeterModel> {
        self.models.get(name)
    }

    /// Model names, sorted (for "unknown model; available: ..." messages).
    pub fn names(&self) -> Vec<&str> {
        self.models.keys().map(String::as_str).collect()
    }

    pub fn insert(&mut self, model: MeterModel) {
        self.models.insert(model.name.clone(), model);
    }
}
