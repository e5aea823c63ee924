//! One simulated meter: its electrical state (load, voltage, power factor, integrated energy),
//! the value of every contract quantity at an instant, and the register image a read returns.

use super::config::{Fault, SimMeterConfig};
use crate::meter::{MeterModel, encode_value};
use std::sync::Arc;
use std::time::Instant;

/// Per-phase voltage factors: a small, fixed imbalance so phases are distinguishable.
const PHASE_VOLTAGE: [f64; 3] = [1.000, 1.004, 0.997];
/// Shares of the import energy registered in tariffs t1..t4 (they add up to 1).
const TARIFF_SHARE: [f64; 4] = [0.4, 0.3, 0.2, 0.1];
const FREQUENCY_HZ: f64 = 50.0;

/// Cumulative registers, integrated up to `at`.
#[derive(Debug, Clone, Copy)]
struct Counters {
    import_kwh: f64,
    export_kwh: f64,
    reactive_import_kvarh: f64,
    reactive_export_kvarh: f64,
    at: Instant,
}

/// A simulated meter's state.
#[derive(Debug, Clone)]
pub struct SimMeter {
    pub model: Arc<MeterModel>,
    pub fault: Fault,
    load_kw: f64,
    voltage_v: f64,
    power_factor: f64,
    export: bool,
    counters: Counters,
}

impl SimMeter {
    pub fn new(config: &SimMeterConfig, model: Arc<MeterModel>, now: Instant) -> SimMeter {
        let (import_kwh, export_kwh) = if config.export {
            (0.0, config.energy_start_kwh)
        } else {
            (config.energy_start_kwh, 0.0)
        };
        SimMeter {
            model,
            fault: config.fault.clone(),
            load_kw: config.load_kw,
            voltage_v: config.voltage_v,
            power_factor: config.power_factor,
            export: config.export,
            counters: Counters {
                import_kwh,
                export_kwh,
                reactive_import_kvarh: 0.0,
                reactive_export_kvarh: 0.0,
                at: now,
            },
        }
    }

    /// The mean active power (kW, ≥ 0; exported for a PV meter).
    pub fn load_kw(&self) -> f64 {
        self.load_kw
    }

    /// Changes the load from `now` on; the energy registered so far is kept.
    pub fn set_load(&mut self, load_kw: f64, now: Instant) {
        self.counters = self.counters_at(now);
        self.load_kw = load_kw.max(0.0);
    }

    fn tan_phi(&self) -> f64 {
        let pf = self.power_factor.clamp(1e-3, 1.0);
        (1.0 - pf * pf).sqrt() / pf
    }

    fn counters_at(&self, now: Instant) -> Counters {
        let hours = now
            .saturating_duration_since(self.counters.at)
            .as_secs_f64()
            / 3600.0;
        let kwh = self.load_kw * hours;
        let kvarh = kwh * self.tan_phi();
        let mut c = self.counters;
        if self.export {
            c.export_kwh += kwh;
            c.reactive_export_kvarh += kvarh;
        } else {
            c.import_kwh += kwh;
            c.reactive_import_kvarh += kvarh;
        }
        c.at = now;
        c
    }

    fn three_phase(&self) -> bool {
        self.model.phases != 1
    }

    fn phase_voltage(&self, phase: usize) -> f64 {
        self.voltage_v * PHASE_VOLTAGE[phase]
    }

    /// Active power, kW: positive when importing, negative for a PV meter.
    fn power_kw(&self) -> f64 {
        if self.export {
            -self.load_kw
        } else {
            self.load_kw
        }
    }

    fn phase_current(&self, phase: usize) -> f64 {
        let watts = self.load_kw * 1000.0;
        if self.three_phase() {
            watts / 3.0 / (self.phase_voltage(phase) * self.power_factor)
        } else if phase == 0 {
            watts / (self.phase_voltage(0) * self.power_factor)
        } else {
            0.0
        }
    }

    fn phase_power(&self, phase: usize) -> f64 {
        if self.three_phase() {
            self.power_kw() / 3.0
        } else if phase == 0 {
            self.power_kw()
        } else {
            0.0
        }
    }

    /// The value of `quantity` (a contract name) at `now`, or `None` for a name this simulator
    /// does not produce.
    pub fn value(&self, quantity: &str, now: Instant) -> Option<f64> {
        let c = self.counters_at(now);
        let line = |a: usize, b: usize| {
            3f64.sqrt() * (self.phase_voltage(a) + self.phase_voltage(b)) / 2.0
        };
        let v = match quantity {
            "energy_import_kwh" => c.import_kwh,
            "energy_export_kwh" => c.export_kwh,
            "energy_import_t1_kwh" => c.import_kwh * TARIFF_SHARE[0],
            "energy_import_t2_kwh" => c.import_kwh * TARIFF_SHARE[1],
            "energy_import_t3_kwh" => c.import_kwh * TARIFF_SHARE[2],
            "energy_import_t4_kwh" => c.import_kwh * TARIFF_SHARE[3],
            "reactive_energy_import_kvarh" => c.reactive_import_kvarh,
            "reactive_energy_export_kvarh" => c.reactive_export_kvarh,
            "voltage_l1_v" => self.phase_voltage(0),
            "voltage_l2_v" => self.phase_voltage(1),
            "voltage_l3_v" => self.phase_voltage(2),
            "voltage_l12_v" => line(0, 1),
            "voltage_l23_v" => line(1, 2),
            "voltage_l31_v" => line(2, 0),
            "current_l1_a" => self.phase_current(0),
            "current_l2_a" => self.phase_current(1),
            "current_l3_a" => self.phase_current(2),
            "current_n_a" => {
                // Vector sum of the phase currents 120° apart.
                let i = [0, 1, 2].map(|p| self.phase_current(p));
                let x = i[0] - (i[1] + i[2]) / 2.0;
                let y = 3f64.sqrt() / 2.0 * (i[2] - i[1]);
                (x * x + y * y).sqrt()
            }
            "power_kw" => self.power_kw(),
            "power_l1_kw" => self.phase_power(0),
            "power_l2_kw" => self.phase_power(1),
            "power_l3_kw" => self.phase_power(2),
            "reactive_power_kvar" => self.power_kw() * self.tan_phi(),
            "apparent_power_kva" => self.load_kw / self.power_factor,
            "power_factor" => self.power_factor,
            "frequency_hz" => FREQUENCY_HZ,
            _ => return None,
        };
        Some(v)
    }

    /// The words a read of `count` registers from `address` with `function` returns at `now`:
    /// each mapped register encoded per the model, unmapped registers 0.
    pub fn registers(&self, function: u8, address: u16, count: u16, now: Instant) -> Vec<u16> {
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
            let value = self.value(&def.quantity, now).unwrap_or(0.0);
            for (k, w) in encode_value(def, value).into_iter().enumerate() {
                let at = first + k;
                if (start..end).contains(&at) {
                    words[at - start] = w;
                }
            }
        }
        words
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::decode_block;
    use crate::sim::fixtures;
    use std::time::Duration;

    fn meter(export: bool) -> (SimMeter, Instant) {
        let now = Instant::now();
        let cfg = SimMeterConfig {
            bus: "b".into(),
            unit: 1,
            model: "test-3ph".into(),
            load_kw: 3.6,
            energy_start_kwh: 1000.0,
            voltage_v: 230.0,
            power_factor: 0.9,
            export,
            fault: Fault::default(),
        };
        (SimMeter::new(&cfg, Arc::new(fixtures::model()), now), now)
    }

    #[test]
    fn energy_advances_with_load() {
        let (mut m, t0) = meter(false);
        let t1 = t0 + Duration::from_secs(3600);
        assert!((m.value("energy_import_kwh", t1).unwrap() - 1003.6).abs() < 1e-9);
        m.set_load(0.0, t1);
        let t2 = t1 + Duration::from_secs(3600);
        assert!((m.value("energy_import_kwh", t2).unwrap() - 1003.6).abs() < 1e-9);
        let tariffs: f64 = (1..=4)
            .map(|t| m.value(&format!("energy_import_t{t}_kwh"), t2).unwrap())
            .sum();
        assert!((tariffs - 1003.6).abs() < 1e-9);
    }

    #[test]
    fn pv_meter_exports() {
        let (m, t0) = meter(true);
        let t1 = t0 + Duration::from_secs(1800);
        assert_eq!(m.value("energy_import_kwh", t1), Some(0.0));
        assert!((m.value("energy_export_kwh", t1).unwrap() - 1001.8).abs() < 1e-9);
        assert_eq!(m.value("power_kw", t1), Some(-3.6));
    }

    #[test]
    fn currents_follow_power() {
        let (m, t0) = meter(false);
        let p: f64 = (0..3)
            .map(|p| m.phase_voltage(p) * m.phase_current(p) * 0.9)
            .sum::<f64>();
        assert!((p - 3600.0).abs() < 1e-6);
        assert!(m.value("current_n_a", t0).unwrap() < 0.1);
    }

    #[test]
    fn register_image_decodes_to_values() {
        let (m, t0) = meter(false);
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
