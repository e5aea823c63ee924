//! One simulated meter as the bus sees it: its model, faults, missed reads, and the register
//! image a read returns, with values taken from its installation in the [`Area`]; and the
//! holding registers written to it (a write to a register it has is kept and read back, a new
//! unit id in its `[setup]` register moves it).

use super::area::{Area, MeterView};
use super::config::Fault;
use super::profile;
use crate::meter::{MeterModel, encode_value};
use crate::protocol::modbus::codec::{ILLEGAL_DATA_ADDRESS, READ_HOLDING};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Shares of the import energy registered in tariffs t1..t4 (they add up to 1).
const TARIFF_SHARE: [f64; 4] = [0.4, 0.3, 0.2, 0.1];
const FREQUENCY_HZ: f64 = 50.0;

/// A simulated meter on a bus.
pub struct SimMeter {
    pub model: Arc<MeterModel>,
    pub fault: Fault,
    /// Its installation in the area.
    pub index: usize,
    area: Arc<Area>,
    seed: u64,
    /// Requests seen so far (numbers the draws of `miss_reads_pct`).
    requests: u64,
    /// DL/T 645: how far the meter's clock is ahead of true time, ms.
    pub clock_offset_ms: i64,
    /// Holding registers written, by address: they read back as written.
    written: BTreeMap<u16, u16>,
    /// DL/T 645: the relay, alarm and keep-power state remote control (1CH) sets; status word 3
    /// shows it.
    pub relay: crate::protocol::dlt645::codec::RelayStatus,
    /// DL/T 645-2007: the daily freezes the meter recorded at its clock's midnights.
    pub daily_freezes: super::dlt645::FreezeHistory,
}

impl SimMeter {
    pub fn new(
        model: Arc<MeterModel>,
        fault: Fault,
        index: usize,
        area: Arc<Area>,
        seed: u64,
    ) -> SimMeter {
        SimMeter {
            model,
            clock_offset_ms: fault.clock_offset_s * 1000,
            fault,
            index,
            area,
            seed,
            requests: 0,
            written: BTreeMap::new(),
            relay: Default::default(),
            daily_freezes: Default::default(),
        }
    }

    /// Replaces the meter's faults; a changed `clock_offset_s` sets its clock that far off.
    pub fn set_fault(&mut self, fault: Fault) {
        if fault.clock_offset_s != self.fault.clock_offset_s {
            self.clock_offset_ms = fault.clock_offset_s * 1000;
        }
        self.fault = fault;
    }

    /// Fills the model's `[setup]` registers as a meter at `unit` on a line at `baud` reads
    /// them (its unit id, and its baud rate's code when the model lists it).
    pub fn preset_setup(&mut self, unit: u8, baud: u32) {
        let Some(setup) = self.model.setup.clone() else {
            return;
        };
        let mut put = |request: crate::protocol::modbus::codec::Request| {
            if let crate::protocol::modbus::codec::Request::WriteRegisters { address, values } =
                request
            {
                for (k, v) in values.into_iter().enumerate() {
                    self.written.insert(address + k as u16, v);
                }
            } else if let crate::protocol::modbus::codec::Request::WriteRegister {
                address,
                value,
            } = request
            {
                self.written.insert(address, value);
            }
        };
        put(setup.unit_id_write(unit));
        if let Ok(request) = setup.baud_write(baud) {
            put(request);
        }
    }

    /// Whether the holding register at `address` is one the meter has: a word of a mapped
    /// holding register, or of a `[setup]` register of its model.
    fn has_holding(&self, address: u16) -> bool {
        let within =
            |first: u16, words: u16| (first..first.saturating_add(words)).contains(&address);
        let mapped = self
            .model
            .registers
            .iter()
            .any(|d| d.function == READ_HOLDING && within(d.address, d.data_type.words()));
        let setup = self.model.setup.as_ref().is_some_and(|s| {
            within(s.unit_id_register, s.words())
                || s.baud_register.is_some_and(|b| within(b, s.words()))
        });
        mapped || setup
    }

    /// Writes `values` to the holding registers from `address`: all kept, or exception 02 when
    /// any of them is not a register the meter has (nothing is written then).
    pub fn write(&mut self, address: u16, values: &[u16]) -> Result<(), u8> {
        let addresses = (0..values.len()).map(|k| address as usize + k);
        if addresses
            .clone()
            .any(|a| a > 0xFFFF || !self.has_holding(a as u16))
        {
            return Err(ILLEGAL_DATA_ADDRESS);
        }
        for (a, v) in addresses.zip(values) {
            self.written.insert(a as u16, *v);
        }
        Ok(())
    }

    /// The unit id written to the model's `[setup]` unit id register, when it is a valid one.
    pub fn written_unit_id(&self) -> Option<u8> {
        let setup = self.model.setup.as_ref()?;
        let words: Vec<u16> = (0..setup.words())
            .map(|k| self.written.get(&(setup.unit_id_register + k)).copied())
            .collect::<Option<_>>()?;
        let unit = setup.decode(&words);
        (unit.fract() == 0.0 && (1.0..=247.0).contains(&unit)).then_some(unit as u8)
    }

    /// Counts a request; true when `miss_reads_pct` says this one goes unanswered.
    pub fn misses_request(&mut self) -> bool {
        let pct = self.area.conditions(self.index).miss_reads_pct;
        let n = self.requests;
        self.requests += 1;
        pct > 0.0 && profile::unit(self.seed ^ 0x4D15_5ED0, n as i64) * 100.0 < pct
    }

    /// The value of `quantity` (a contract name) at `now`, or `None` for a name this simulator
    /// does not produce.
    pub fn value(&self, quantity: &str, now: Instant) -> Option<f64> {
        quantity_value(&self.area.view(self.index, now), quantity)
    }

    /// The words a read of `count` registers from `address` with `function` returns at `now`:
    /// each mapped register encoded per the model, unmapped registers 0.
    pub fn registers(&self, function: u8, address: u16, count: u16, now: Instant) -> Vec<u16> {
        let view = self.area.view(self.index, now);
        let mut words = vec![0u16; count as usize];
        let start = address as usize;
        let end = start + count as usize;
        for def in self
            .model
            .registers
            .iter()
            .filter(|d| d.function == function)
        {
            let first = def.address as usize;
            let width = def.data_type.words() as usize;
            if first + width <= start || first >= end {
                continue;
            }
            let value = quantity_value(&view, &def.quantity).unwrap_or(0.0);
            for (k, w) in encode_value(def, value).into_iter().enumerate() {
                let at = first + k;
                if (start..end).contains(&at) {
                    words[at - start] = w;
                }
            }
        }
        if function == READ_HOLDING {
            for (&at, &w) in self.written.range(address..) {
                if (at as usize) < end {
                    words[at as usize - start] = w;
                }
            }
        }
        words
    }
}

/// The value of `quantity` in `view`.
fn quantity_value(view: &MeterView, quantity: &str) -> Option<f64> {
    let r = &view.registers;
    let u = &view.voltage_v;
    let i = &view.current_a;
    let line = |a: usize, b: usize| {
        // |Ua − Ub| for phasors 120° apart.
        (u[a] * u[a] + u[b] * u[b] + u[a] * u[b]).sqrt()
    };
    let pf = view.power_factor.clamp(1e-3, 1.0);
    let tan_phi = (1.0 - pf * pf).sqrt() / pf;
    let v = match quantity {
        "energy_import_kwh" => r.import_kwh,
        "energy_export_kwh" => r.export_kwh,
        "energy_import_t1_kwh" => r.import_kwh * TARIFF_SHARE[0],
        "energy_import_t2_kwh" => r.import_kwh * TARIFF_SHARE[1],
        "energy_import_t3_kwh" => r.import_kwh * TARIFF_SHARE[2],
        "energy_import_t4_kwh" => r.import_kwh * TARIFF_SHARE[3],
        "reactive_energy_import_kvarh" => r.reactive_import_kvarh,
        "reactive_energy_export_kvarh" => r.reactive_export_kvarh,
        "voltage_l1_v" => u[0],
        "voltage_l2_v" => u[1],
        "voltage_l3_v" => u[2],
        "voltage_l12_v" => line(0, 1),
        "voltage_l23_v" => line(1, 2),
        "voltage_l31_v" => line(2, 0),
        "current_l1_a" => i[0],
        "current_l2_a" => i[1],
        "current_l3_a" => i[2],
        "current_n_a" => {
            // Vector sum of the phase currents 120° apart.
            let x = i[0] - (i[1] + i[2]) / 2.0;
            let y = 3f64.sqrt() / 2.0 * (i[2] - i[1]);
            (x * x + y * y).sqrt()
        }
        "power_kw" => view.power_kw,
        "power_l1_kw" => view.phase_power_kw[0],
        "power_l2_kw" => view.phase_power_kw[1],
        "power_l3_kw" => view.phase_power_kw[2],
        "reactive_power_kvar" => view.power_kw * tan_phi,
        "apparent_power_kva" => view.power_kw.abs() / pf,
        "power_factor" => view.power_factor,
        "frequency_hz" => FREQUENCY_HZ,
        _ => return None,
    };
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::decode_block;
    use crate::sim::SimConfig;
    use crate::sim::fixtures;
    use std::path::Path;
    use std::time::Duration;

    /// A `test-3ph` meter with the `[[meter]]` keys `extra`, its area starting at `t0`.
    fn meter(extra: &str) -> (SimMeter, Instant) {
        let text = format!(
            "[[bus]]\nname = \"b\"\nlink = \"x\"\n[[meter]]\nbus = \"b\"\nunit = 1\n\
             model = \"test-3ph\"\nload_kw = 3.6\nenergy_start_kwh = 1000.0\n\
             power_factor = 0.9\n{extra}\n"
        );
        let config = SimConfig::parse(&text, "t.toml", Path::new(".")).unwrap();
        let t0 = Instant::now();
        let area = Area::new(&config.meters, &[true], None, t0, 1_795_000_000_000).unwrap();
        let m = &config.meters[0];
        let model = Arc::new(fixtures::model());
        (
            SimMeter::new(model, m.fault.clone(), 0, Arc::new(area), m.seed),
            t0,
        )
    }

    #[test]
    fn energy_advances_with_load() {
        let (m, t0) = meter("");
        let t1 = t0 + Duration::from_secs(3600);
        assert!((m.value("energy_import_kwh", t1).unwrap() - 1003.6).abs() < 1e-9);
        let mut c = m.area.conditions(0);
        c.load_kw = 0.0;
        m.area.set_conditions(0, c, t1);
        let t2 = t1 + Duration::from_secs(3600);
        assert!((m.value("energy_import_kwh", t2).unwrap() - 1003.6).abs() < 1e-9);
        let tariffs: f64 = (1..=4)
            .map(|t| m.value(&format!("energy_import_t{t}_kwh"), t2).unwrap())
            .sum();
        assert!((tariffs - 1003.6).abs() < 1e-9);
    }

    #[test]
    fn pv_meter_exports() {
        let (m, t0) = meter("export = true");
        let t1 = t0 + Duration::from_secs(1800);
        assert_eq!(m.value("energy_import_kwh", t1), Some(0.0));
        assert!((m.value("energy_export_kwh", t1).unwrap() - 1001.8).abs() < 1e-9);
        assert!((m.value("power_kw", t1).unwrap() + 3.6).abs() < 1e-9);
    }

    #[test]
    fn currents_follow_power() {
        let (m, t0) = meter("");
        let p: f64 = ["1", "2", "3"]
            .iter()
            .map(|p| {
                m.value(&format!("voltage_l{p}_v"), t0).unwrap()
                    * m.value(&format!("current_l{p}_a"), t0).unwrap()
                    * 0.9
            })
            .sum();
        assert!((p - 3600.0).abs() < 1e-6);
        assert!(m.value("current_n_a", t0).unwrap() < 0.1);
        let u12 = m.value("voltage_l12_v", t0).unwrap();
        assert!((u12 - 230.0 * 3f64.sqrt()).abs() < 2.0, "{u12}");
    }

    #[test]
    fn misses_are_deterministic_and_near_the_share() {
        let (mut a, _) = meter("miss_reads_pct = 20.0\nseed = 5");
        let (mut b, _) = meter("miss_reads_pct = 20.0\nseed = 5");
        let draws: Vec<bool> = (0..1000).map(|_| a.misses_request()).collect();
        let again: Vec<bool> = (0..1000).map(|_| b.misses_request()).collect();
        assert_eq!(draws, again);
        let missed = draws.iter().filter(|m| **m).count();
        assert!((150..250).contains(&missed), "{missed}");
        let (mut none, _) = meter("");
        assert!((0..100).all(|_| !none.misses_request()));
    }

    #[test]
    fn register_image_decodes_to_values() {
        let (m, t0) = meter("");
        let model = fixtures::model();
        let block = crate::meter::ReadBlock {
            function: 4,
            address: 0,
            count: 80,
            registers: (0..model.registers.len())
                .filter(|&i| model.registers[i].function == 4)
                .collect(),
        };
        let words = m.registers(4, 0, 80, t0);
        for (q, v) in decode_block(&model, &block, &words) {
            let want = m.value(&q, t0).unwrap();
            assert!(
                (v - want).abs() < want.abs() * 1e-6 + 1e-3,
                "{q}: {v} vs {want}"
            );
        }
        // Unmapped registers inside the block read 0; a block that starts mid-value gets the
        // value's tail only.
        assert_eq!(words[20], 0);
        let tail = m.registers(4, 1, 1, t0);
        assert_eq!(tail[0], words[1]);
    }
}
