//! The meter model types and the library of models: the built-in models compiled in from
//! `protocols/*.toml`, and the models a user adds from a directory.
//!
//! Parsing and validating one file is in [`super::model_file`]; this module owns the agreed
//! types (`DataType`, `WordOrder`, `RegisterDef`, `MeterModel`, `ModelError`, `ModelLibrary`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use super::dlt645_model::{self, Dlt645Model};
use super::model_file;

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

    /// Every data type, in the order model-file documentation lists them.
    pub const ALL: [DataType; 7] = [
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::F32,
        DataType::U64,
        DataType::F64,
    ];

    /// The name used in model files (`"f32"`), for messages and tools that print a model.
    pub fn name(self) -> &'static str {
        match self {
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::F32 => "f32",
            DataType::U64 => "u64",
            DataType::F64 => "f64",
        }
    }

    /// The data type a model file names (`"f32"`, case-insensitive); `None` for anything else.
    pub fn from_name(name: &str) -> Option<DataType> {
        let name = name.to_ascii_lowercase();
        DataType::ALL.into_iter().find(|t| t.name() == name)
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

impl WordOrder {
    /// Every word order.
    pub const ALL: [WordOrder; 4] = [
        WordOrder::Abcd,
        WordOrder::Cdab,
        WordOrder::Badc,
        WordOrder::Dcba,
    ];

    /// The name used in model files (`"abcd"`).
    pub fn name(self) -> &'static str {
        match self {
            WordOrder::Abcd => "abcd",
            WordOrder::Cdab => "cdab",
            WordOrder::Badc => "badc",
            WordOrder::Dcba => "dcba",
        }
    }

    /// The word order a model file names (`"cdab"`, case-insensitive); `None` for anything else.
    pub fn from_name(name: &str) -> Option<WordOrder> {
        let name = name.to_ascii_lowercase();
        WordOrder::ALL.into_iter().find(|o| o.name() == name)
    }
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
    /// How a new meter's unit id and baud rate are set (`[setup]`), when the model documents it.
    pub setup: Option<super::setup::Setup>,
    /// File the model came from (`builtin:protocols/x.toml` for compiled-in ones).
    pub source: String,
}

impl MeterModel {
    /// The register that holds `quantity`, if the model maps it.
    pub fn register(&self, quantity: &str) -> Option<&RegisterDef> {
        self.registers.iter().find(|r| r.quantity == quantity)
    }
}

/// A problem in a model file, at `FILE:LINE:COL`.
pub type ModelError = crate::diagnostic::Problem;

/// Declares the built-in model files: each is compiled in and named
/// `builtin:protocols/FILE` in errors. A test checks that every file in `protocols/` is listed.
macro_rules! builtin_model_files {
    ($($file:literal),* $(,)?) => {
        &[$((
            concat!("builtin:protocols/", $file),
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/protocols/", $file)),
        )),*]
    };
}

/// `(source, text)` of every built-in model file.
pub const BUILTIN_MODEL_FILES: &[(&str, &str)] = builtin_model_files!(
    "abb-b23.toml",
    "acrel-adl200.toml",
    "acrel-adl400.toml",
    "chint-ddsu666.toml",
    "chint-dtsu666.toml",
    "eastron-sdm120.toml",
    "eastron-sdm230.toml",
    "eastron-sdm630.toml",
    "eastron-sdm72.toml",
    "gavazzi-em340.toml",
);

/// All models available to a configuration, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelLibrary {
    pub models: BTreeMap<String, MeterModel>,
    /// DL/T 645 models (data-identifier maps), by name; see [`super::dlt645_model`].
    pub dlt645: BTreeMap<String, Dlt645Model>,
}

impl ModelLibrary {
    /// The models compiled in from `protocols/*.toml`.
    ///
    /// # Panics
    ///
    /// When a built-in file fails validation: that is a bug in this program, caught by the unit
    /// test that loads the built-in library.
    pub fn builtin() -> ModelLibrary {
        static BUILTIN: OnceLock<ModelLibrary> = OnceLock::new();
        BUILTIN
            .get_or_init(|| {
                let mut library = ModelLibrary {
                    dlt645: dlt645_model::builtin(),
                    ..ModelLibrary::default()
                };
                let mut errors = Vec::new();
                for (source, text) in BUILTIN_MODEL_FILES {
                    match model_file::parse(text, source) {
                        Ok(parsed) => library.insert(parsed.model),
                        Err(e) => errors.extend(e),
                    }
                }
                if !errors.is_empty() {
                    let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    panic!("built-in meter models are invalid:\n{}", list.join("\n"));
                }
                library
            })
            .clone()
    }

    /// Adds (or replaces, by name) every `*.toml` model in `dir`. Returns every problem found,
    /// each naming the file and line.
    ///
    /// Valid files are added even when others in the directory have errors; two files in the
    /// directory defining the same name is an error (the later file, by file name, is skipped).
    pub fn load_dir(&mut self, dir: &Path) -> Result<(), Vec<ModelError>> {
        let unreadable = |path: &Path, e: std::io::Error| ModelError {
            file: path.display().to_string(),
            line: 1,
            col: 1,
            message: format!("cannot read the meter model directory or file: {e}"),
        };
        let entries = std::fs::read_dir(dir).map_err(|e| vec![unreadable(dir, e)])?;
        let mut errors = Vec::new();
        let mut paths = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => {
                    let path = entry.path();
                    if path.extension().is_some_and(|x| x == "toml") && path.is_file() {
                        paths.push(path);
                    }
                }
                Err(e) => errors.push(unreadable(dir, e)),
            }
        }
        paths.sort();
        // Name → (file, line) of the first definition in this directory.
        let mut defined: BTreeMap<String, (String, usize)> = BTreeMap::new();
        for path in paths {
            let source = path.display().to_string();
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) => {
                    errors.push(unreadable(&path, e));
                    continue;
                }
            };
            if dlt645_model::declares_dlt645(&text) {
                match dlt645_model::parse(&text, &source) {
                    Ok(model) => drop(self.dlt645.insert(model.name.clone(), model)),
                    Err(e) => errors.extend(e),
                }
                continue;
            }
            match model_file::parse(&text, &source) {
                Ok(parsed) => {
                    let name = parsed.model.name.clone();
                    if let Some((file, line)) = defined.get(&name) {
                        errors.push(ModelError {
                            file: source,
                            line: parsed.name_at.0,
                            col: parsed.name_at.1,
                            message: format!(
                                "model \"{name}\" is already defined in {file}:{line}; give one \
                                 of them another name"
                            ),
                        });
                        continue;
                    }
                    defined.insert(name, (source, parsed.name_at.0));
                    self.insert(parsed.model);
                }
                Err(e) => errors.extend(e),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Parses and validates one model file's text (`source` names it in errors).
    pub fn parse_model(text: &str, source: &str) -> Result<MeterModel, Vec<ModelError>> {
        model_file::parse(text, source).map(|parsed| parsed.model)
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Option<&MeterModel> {
        self.models.get(name)
    }

    /// The DL/T 645 model called `name`.
    pub fn get_dlt645(&self, name: &str) -> Option<&Dlt645Model> {
        self.dlt645.get(name)
    }

    /// Model names, sorted (for "unknown model; available: ..." messages).
    pub fn names(&self) -> Vec<&str> {
        self.models.keys().map(String::as_str).collect()
    }

    /// Adds `model`, replacing a model of the same name.
    pub fn insert(&mut self, model: MeterModel) {
        self.models.insert(model.name.clone(), model);
    }

    /// The names closest to `name` (for "unknown model \"sdm630\"; did you mean ...").
    pub fn similar_names(&self, name: &str, n: usize) -> Vec<&str> {
        let names = self.names();
        crate::diagnostic::closest(name, &names, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUIRED: [&str; 10] = [
        "abb-b23",
        "acrel-adl200",
        "acrel-adl400",
        "chint-ddsu666",
        "chint-dtsu666",
        "eastron-sdm120",
        "eastron-sdm230",
        "eastron-sdm630",
        "eastron-sdm72",
        "gavazzi-em340",
    ];

    #[test]
    fn the_builtin_library_loads() {
        let library = ModelLibrary::builtin();
        for name in REQUIRED {
            let m = library
                .get(name)
                .unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(m.source, format!("builtin:protocols/{name}.toml"));
            assert!(m.register("energy_import_kwh").is_some(), "{name}");
            assert!(m.register("power_kw").is_some(), "{name}");
            assert!(m.register("voltage_l1_v").is_some(), "{name}");
            assert!(m.register("current_l1_a").is_some(), "{name}");
            assert!(m.register("frequency_hz").is_some(), "{name}");
            assert!(m.register("power_factor").is_some(), "{name}");
            if m.phases == 3 {
                for q in ["voltage_l3_v", "current_l3_a", "power_l1_kw", "power_l3_kw"] {
                    assert!(m.register(q).is_some(), "{name} lacks {q}");
                }
            }
        }
        assert!(library.names().windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn every_protocols_file_is_compiled_in() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocols");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = BUILTIN_MODEL_FILES
            .iter()
            .chain(super::super::dlt645_model::BUILTIN_DLT645_FILES)
            .map(|(source, _)| source.trim_start_matches("builtin:protocols/").to_string())
            .collect();
        listed.sort();
        assert_eq!(
            on_disk, listed,
            "add new protocols/*.toml to BUILTIN_MODEL_FILES"
        );
    }

    #[test]
    fn builtin_files_cite_their_source_and_match_their_file_name() {
        for (source, text) in BUILTIN_MODEL_FILES {
            assert!(
                text.starts_with("# "),
                "{source} must start with a comment citing the vendor's table"
            );
            let parsed = ModelLibrary::parse_model(text, source).unwrap();
            let stem = source
                .trim_start_matches("builtin:protocols/")
                .trim_end_matches(".toml");
            assert_eq!(parsed.name, stem);
        }
    }

    fn model_text(name: &str, quantity: &str) -> String {
        format!(
            "[model]\nname = \"{name}\"\nphases = 1\nfunction = 3\ntype = \"u16\"\n\
             [[register]]\nquantity = \"{quantity}\"\naddress = 1\n"
        )
    }

    #[test]
    fn load_dir_adds_replaces_and_collects_every_error() {
        let dir = tempfile::tempdir().unwrap();
        let write = |file: &str, text: &str| std::fs::write(dir.path().join(file), text).unwrap();
        write("a-own.toml", &model_text("own-meter", "power_kw"));
        write(
            "b-replace.toml",
            &model_text("eastron-sdm630", "frequency_hz"),
        );
        write("c-broken.toml", "[model]\nname = \"broken\"\nphases = 1\n");
        write("d-twice.toml", &model_text("own-meter", "voltage_l1_v"));
        write("e-syntax.toml", "[model\n");
        write("notes.txt", "not a model");

        let mut library = ModelLibrary::builtin();
        let errors = library.load_dir(dir.path()).unwrap_err();

        assert!(library.get("own-meter").is_some());
        let replaced = library.get("eastron-sdm630").unwrap();
        assert_eq!(replaced.registers.len(), 1);
        assert!(replaced.source.ends_with("b-replace.toml"));
        assert!(
            library.get("eastron-sdm120").is_some(),
            "other builtins stay"
        );
        assert!(library.get("broken").is_none());

        let files: Vec<&str> = errors.iter().map(|e| e.file.as_str()).collect();
        assert!(
            files.iter().any(|f| f.ends_with("c-broken.toml")),
            "{errors:?}"
        );
        assert!(
            files.iter().any(|f| f.ends_with("e-syntax.toml")),
            "{errors:?}"
        );
        let twice = errors
            .iter()
            .find(|e| e.file.ends_with("d-twice.toml"))
            .expect("duplicate name reported");
        assert_eq!((twice.line, twice.col), (2, 8));
        assert!(twice.message.contains("a-own.toml:2"), "{twice}");
        // The first definition wins.
        assert_eq!(
            library.get("own-meter").unwrap().registers[0].quantity,
            "power_kw"
        );
    }

    #[test]
    fn load_dir_of_a_missing_directory_names_it() {
        let mut library = ModelLibrary::default();
        let errors = library
            .load_dir(Path::new("/nonexistent/models"))
            .unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].file, "/nonexistent/models");
        assert!(errors[0].message.contains("cannot read"));
    }

    #[test]
    fn load_dir_of_valid_files_is_ok() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.toml"), model_text("m", "power_kw")).unwrap();
        let mut library = ModelLibrary::default();
        library.load_dir(dir.path()).unwrap();
        assert_eq!(library.names(), vec!["m"]);
        assert_eq!(library.similar_names("n", 1), vec!["m"]);
    }

    #[test]
    fn type_and_order_names_round_trip() {
        for t in DataType::ALL {
            assert_eq!(DataType::from_name(t.name()), Some(t));
        }
        for o in WordOrder::ALL {
            assert_eq!(WordOrder::from_name(o.name()), Some(o));
        }
        assert_eq!(DataType::from_name("F32"), Some(DataType::F32));
        assert_eq!(DataType::from_name("i64"), None);
    }
}
