//! The simulated transformer area read through the gateway's own Modbus transport over real
//! pseudo-terminals, compared with the simulator's truth: the supply meter's register times
//! its multiplier is the true supply energy, theft and technical loss make the supply exceed
//! the customers, and every staged condition shows in the registers.
//!
//! Waits are upper bounds; tolerances are register resolution plus the power that flows
//! during the few milliseconds a read's sampling instant is uncertain.

use amr_gateway::clock::now_ms;
use amr_gateway::meter::{MeterModel, ModelLibrary, decode_block, plan_blocks};
use amr_gateway::protocol::modbus::{ModbusClient, ModbusError};
use amr_gateway::sim::{self, Phase, SimConfig, SimHandle, TruthRecord, read_truth};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_millis(400);
const SUPPLY_MULTIPLIER: f64 = 60.0;

/// One supply meter (DTSU666 behind 300/5 A CTs) and four customers (SDM120) on two buses;
/// large flat and varying loads so a few seconds move the registers well past resolution.
fn area_file(truth_interval_s: u64, thief_fraction: f64) -> String {
    format!(
        r#"
[[bus]]
name = "bus1"
link = "ttyBUS1"
baud = 115200
turnaround_ms = 1
[[bus]]
name = "bus2"
link = "ttyBUS2"
baud = 115200
turnaround_ms = 1

[area]
truth = "truth.jsonl"
truth_interval_s = {truth_interval_s}
loss_coeff = 0.0005
no_load_loss_kw = 0.5

[[meter]]
bus = "bus1"
unit = 1
id = "supply"
model = "chint-dtsu666"
role = "supply"
multiplier = {SUPPLY_MULTIPLIER}
energy_start_kwh = 10.0

[[meter]]
bus = "bus1"
unit = 11
id = "c11"
model = "eastron-sdm120"
role = "customer"
load_kw = 30.0
energy_start_kwh = 100.0
theft_fraction = {thief_fraction}

[[meter]]
bus = "bus1"
unit = 12
id = "c12"
model = "eastron-sdm120"
role = "customer"
profile = "random-walk"
seed = 12
load_kw = 20.0
energy_start_kwh = 200.0

[[meter]]
bus = "bus2"
unit = 21
id = "c21"
model = "eastron-sdm120"
role = "customer"
profile = "residential"
seed = 21
load_kw = 25.0
energy_start_kwh = 300.0

[[meter]]
bus = "bus2"
unit = 22
id = "c22"
model = "eastron-sdm120"
role = "customer"
load_kw = 10.0
pv_kw = 4.0
energy_start_kwh = 400.0
"#
    )
}

struct Area {
    sim: SimHandle,
    dir: tempfile::TempDir,
    library: ModelLibrary,
    bus1: ModbusClient,
    bus2: ModbusClient,
}

impl Area {
    async fn start(text: &str) -> Area {
        let dir = tempfile::tempdir().unwrap();
        let config = SimConfig::parse(text, "sim-area-test.toml", dir.path()).unwrap();
        let library = ModelLibrary::builtin();
        let sim = sim::start(config, &library).unwrap();
        let bus1 = ModbusClient::open(&sim.link("bus1").unwrap(), Duration::from_secs(1))
            .await
            .unwrap();
        let bus2 = ModbusClient::open(&sim.link("bus2").unwrap(), Duration::from_secs(1))
            .await
            .unwrap();
        Area {
            sim,
            dir,
            library,
            bus1,
            bus2,
        }
    }

    fn model(&self, unit: u8) -> MeterModel {
        let name = if unit == 1 {
            "chint-dtsu666"
        } else {
            "eastron-sdm120"
        };
        self.library.get(name).unwrap().clone()
    }

    fn client(&mut self, unit: u8) -> &mut ModbusClient {
        if unit < 20 {
            &mut self.bus1
        } else {
            &mut self.bus2
        }
    }

    /// Every quantity of meter `unit`, read block by block as the gateway plans it.
    async fn read(&mut self, unit: u8) -> Result<BTreeMap<String, f64>, ModbusError> {
        let model = self.model(unit);
        let mut values = BTreeMap::new();
        for block in plan_blocks(&model, model.max_block) {
            let words = self
                .client(unit)
                .read_registers(unit, block.function, block.address, block.count, TIMEOUT)
                .await?;
            values.extend(decode_block(&model, &block, &words));
        }
        Ok(values)
    }

    /// Import and export energy registers of `unit` in one request, kWh (secondary).
    async fn energy(&mut self, unit: u8) -> (f64, f64) {
        let model = self.model(unit);
        let import = model.register("energy_import_kwh").unwrap().clone();
        let export = model.register("energy_export_kwh").unwrap().clone();
        let count = export.address - import.address + 2;
        let words = self
            .client(unit)
            .read_registers(unit, import.function, import.address, count, TIMEOUT)
            .await
            .unwrap();
        let f = |at: u16| {
            let i = (at - import.address) as usize;
            f32::from_bits(((words[i] as u32) << 16) | words[i + 1] as u32) as f64
        };
        (f(import.address), f(export.address))
    }
}

/// Linear interpolation of `(ms, value)` samples at `t`, from the samples just around it.
fn at(samples: &[(i64, f64)], t: i64) -> Option<f64> {
    let after = samples.iter().position(|s| s.0 >= t)?;
    if after == 0 {
        return None;
    }
    let (t0, v0) = samples[after - 1];
    let (t1, v1) = samples[after];
    Some(v0 + (v1 - v0) * (t - t0) as f64 / (t1 - t0) as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supply_register_times_multiplier_is_the_true_supply() {
    let mut a = Area::start(&area_file(2, 0.0)).await;
    // Sample the supply's import register often, stamped at the middle of each request.
    let mut samples = Vec::new();
    let until = now_ms() + 7_500;
    while now_ms() < until {
        let sent = now_ms();
        let (import, _) = a.energy(1).await;
        samples.push(((sent + now_ms()) / 2, import));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let records = read_truth(&a.dir.path().join("truth.jsonl")).unwrap();
    let whole: Vec<&TruthRecord> = records.iter().filter(|r| !r.partial).collect();
    assert!(whole.len() >= 2, "{records:?}");
    let mut compared = 0;
    for r in whole {
        let (Some(e0), Some(e1)) = (at(&samples, r.start_ms), at(&samples, r.end_ms)) else {
            continue;
        };
        let measured = (e1 - e0) * SUPPLY_MULTIPLIER;
        // ~85 kW for 2 s is ~0.047 kWh; a step change at the boundary, f32 resolution and
        // the sampling instant cost well under 1.5 Wh.
        assert!(
            (measured - r.supply_kwh).abs() < 0.0015,
            "interval {}: register {measured} kWh, truth {} kWh",
            r.start,
            r.supply_kwh
        );
        assert!((r.loss_kwh - r.technical_loss_kwh).abs() < 1e-9);
        assert!(r.loss_pct.unwrap() > 0.0);
        compared += 1;
    }
    assert!(
        compared >= 2,
        "only {compared} intervals bracketed by reads"
    );
}

/// The net registers (import − export) of every meter, then the truth so far.
async fn round(a: &mut Area) -> (BTreeMap<u8, f64>, TruthRecord) {
    let mut e = BTreeMap::new();
    for u in [1u8, 11, 12, 21, 22] {
        let (import, export) = a.energy(u).await;
        e.insert(u, import - export);
    }
    (e, a.sim.area_truth().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn theft_makes_the_supply_exceed_the_customers() {
    let mut a = Area::start(&area_file(900, 0.5)).await;
    let (e0, t0) = round(&mut a).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (e1, t1) = round(&mut a).await;
    let delta = |u: u8| e1[&u] - e0[&u];
    let supply = delta(1) * SUPPLY_MULTIPLIER;
    let customers: f64 = [11, 12, 21, 22].iter().map(|&u| delta(u)).sum();
    let theft = t1.theft_kwh - t0.theft_kwh;
    let technical = t1.technical_loss_kwh - t0.technical_loss_kwh;
    // 15 kW stolen for ~4 s is ~0.017 kWh; the technical loss about half of that.
    assert!(theft > 0.012, "{theft}");
    let loss = supply - customers;
    assert!(
        (loss - (theft + technical)).abs() < 0.002,
        "measured loss {loss} kWh, true theft {theft} + technical {technical}"
    );
    // The thief's meter records half its true load; each meter matches its truth.
    for (u, id) in [(11u8, "c11"), (12, "c12"), (21, "c21"), (22, "c22")] {
        let truth = t1.meters[id] - t0.meters[id];
        assert!(
            (delta(u) - truth).abs() < 0.001,
            "{id}: {} vs {truth}",
            delta(u)
        );
    }
    assert!(
        (delta(11) - theft).abs() < 0.001,
        "half of 30 kW metered, half stolen"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_conditions_show_in_the_registers() {
    let mut a = Area::start(&area_file(900, 0.0)).await;
    let nominal = a.read(1).await.unwrap();
    assert!((nominal["voltage_l1_v"] - 230.0).abs() < 0.1, "{nominal:?}");
    assert!(nominal["current_l2_a"] > 1.0);

    // Sag on a customer.
    let mut c = a.sim.conditions("bus1", 11).unwrap();
    c.sag = Some(0.85);
    a.sim.set_conditions("bus1", 11, c).unwrap();
    let v = a.read(11).await.unwrap();
    assert!((v["voltage_l1_v"] - 0.85 * 230.0).abs() < 0.1, "{v:?}");

    // Phase loss and swell on the supply meter.
    let mut c = a.sim.conditions("bus1", 1).unwrap();
    c.phase_loss = Some(Phase::L2);
    c.swell = Some(1.1);
    a.sim.set_conditions("bus1", 1, c).unwrap();
    let v = a.read(1).await.unwrap();
    assert_eq!((v["voltage_l2_v"], v["current_l2_a"]), (0.0, 0.0));
    assert!((v["voltage_l1_v"] - 253.0).abs() < 0.1, "{v:?}");
    assert!(v["current_l1_a"] > 1.0);

    // Unbalance on the supply: currents follow the weights.
    let mut c = a.sim.conditions("bus1", 1).unwrap();
    c.phase_loss = None;
    c.swell = None;
    c.unbalance = Some([1.0, 0.5, 0.1]);
    a.sim.set_conditions("bus1", 1, c).unwrap();
    let v = a.read(1).await.unwrap();
    let ratio = v["current_l3_a"] / v["current_l1_a"];
    assert!((ratio - 0.1).abs() < 0.005, "{ratio}");

    // Reversed wiring and a stopped register, side by side.
    let mut c = a.sim.conditions("bus2", 21).unwrap();
    c.reversed = true;
    a.sim.set_conditions("bus2", 21, c).unwrap();
    let mut c = a.sim.conditions("bus1", 12).unwrap();
    c.stopped = true;
    a.sim.set_conditions("bus1", 12, c).unwrap();
    let (rev0, stop0) = (a.energy(21).await, a.energy(12).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rev1, stop1) = (a.energy(21).await, a.energy(12).await);
    assert_eq!(rev1.0, rev0.0, "reversed: import stands still");
    assert!(rev1.1 > rev0.1 + 0.001, "reversed: export advances");
    assert!(a.read(21).await.unwrap()["power_kw"] < 0.0);
    assert_eq!(stop1, stop0, "stopped register");
    assert!(
        a.read(12).await.unwrap()["current_l1_a"] > 1.0,
        "while current flows"
    );

    // Voltage lost at the supply: the area is out.
    let mut c = a.sim.conditions("bus1", 1).unwrap();
    c.voltage_lost = true;
    a.sim.set_conditions("bus1", 1, c).unwrap();
    let v = a.read(1).await.unwrap();
    assert_eq!(
        (v["voltage_l1_v"], v["voltage_l2_v"], v["power_kw"]),
        (0.0, 0.0, 0.0)
    );
    assert_eq!(a.read(22).await.unwrap()["power_kw"], 0.0);

    // A silent bus: every meter on it stops answering; the other bus still answers.
    a.sim.set_bus_silent("bus2", true).unwrap();
    assert!(matches!(a.read(21).await, Err(ModbusError::Timeout(_))));
    assert!(matches!(a.read(22).await, Err(ModbusError::Timeout(_))));
    assert!(a.read(11).await.is_ok());
    a.sim.set_bus_silent("bus2", false).unwrap();
    assert!(a.read(22).await.is_ok());

    // Missed reads: about the configured share goes unanswered.
    let mut c = a.sim.conditions("bus1", 11).unwrap();
    c.miss_reads_pct = 50.0;
    a.sim.set_conditions("bus1", 11, c).unwrap();
    let mut missed = 0;
    for _ in 0..12 {
        if a.read(11).await.is_err() {
            missed += 1;
        }
    }
    assert!((2..=10).contains(&missed), "{missed} of 12 missed");
}

#[test]
fn shipped_area_file_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sim-area.toml");
    let config = SimConfig::load(&path).unwrap();
    let area = config.area.as_ref().expect("an [area]");
    assert!(area.truth.is_some());
    let library = ModelLibrary::builtin();
    for m in &config.meters {
        assert!(library.get(&m.model).is_some(), "{}", m.model);
    }
    let customers = config
        .meters
        .iter()
        .filter(|m| m.role == Some(sim::Role::Customer))
        .count();
    assert!(customers >= 10, "{customers}");
}
