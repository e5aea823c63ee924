//! Test fixtures: a hand-built three-phase model (Eastron-like input registers in f32, plus a
//! holding-register energy counter in u32 CDAB) and a library holding it, so simulator and
//! transport tests do not depend on the shipped model files.

use crate::meter::{DataType, MeterModel, ModelLibrary, RegisterDef, WordOrder};

fn reg(quantity: &str, function: u8, address: u16, data_type: DataType, scale: f64) -> RegisterDef {
    RegisterDef {
        quantity: quantity.into(),
        function,
        address,
        data_type,
        word_order: WordOrder::Abcd,
        scale,
    }
}

/// `test-3ph`: 80 input registers (0..80) and one holding-register energy counter at 0x0100.
pub fn model() -> MeterModel {
    let f32_in = |q: &str, a: u16, s: f64| reg(q, 4, a, DataType::F32, s);
    let mut energy_u32 = reg("energy_import_kwh", 3, 0x0100, DataType::U32, 0.01);
    energy_u32.word_order = WordOrder::Cdab;
    MeterModel {
        name: "test-3ph".into(),
        vendor: "test".into(),
        description: "hand-built test model".into(),
        phases: 3,
        max_block: 80,
        max_gap: 80,
        unit_switch_pause_ms: 0,
        inter_frame_pause_ms: 0,
        registers: vec![
            f32_in("voltage_l1_v", 0, 1.0),
            f32_in("voltage_l2_v", 2, 1.0),
            f32_in("voltage_l3_v", 4, 1.0),
            f32_in("current_l1_a", 6, 1.0),
            f32_in("current_l2_a", 8, 1.0),
            f32_in("current_l3_a", 10, 1.0),
            f32_in("power_l1_kw", 12, 0.001),
            f32_in("power_l2_kw", 14, 0.001),
            f32_in("power_l3_kw", 16, 0.001),
            f32_in("power_kw", 52, 0.001),
            f32_in("power_factor", 62, 1.0),
            f32_in("frequency_hz", 70, 1.0),
            f32_in("energy_import_kwh", 72, 1.0),
            f32_in("energy_export_kwh", 74, 1.0),
            f32_in("energy_import_t1_kwh", 78, 1.0),
            energy_u32,
        ],
        setup: None,
        source: "test".into(),
    }
}

/// A library with [`model`] and the built-in DL/T 645 models.
pub fn library() -> ModelLibrary {
    let mut lib = ModelLibrary {
        dlt645: crate::meter::dlt645_model::builtin(),
        ..ModelLibrary::default()
    };
    lib.insert(model());
    lib
}

/// A simulator started from `toml` with [`library`], its relative links inside a temporary
/// directory that lives as long as this value.
pub struct TestSim {
    pub sim: super::SimHandle,
    pub dir: tempfile::TempDir,
}

/// Starts a simulator for a test (inside a tokio runtime).
pub fn start(toml: &str) -> TestSim {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = super::SimConfig::parse(toml, "test-sim.toml", dir.path()).expect("sim config");
    let sim = super::start(config, &library()).expect("sim starts");
    TestSim { sim, dir }
}
