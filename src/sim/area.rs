//! The electrical truth behind every simulated meter: each customer's load (its profile, theft,
//! PV), what its meter sees and registers (multiplier, register scale, reversed wiring, a
//! stopped register, phase or voltage loss, replacement), and, with an `[area]`, the supply
//! meter that measures the sum of all customer loads plus the technical loss minus PV export.
//!
//! Loads are constant over each profile step ([`STEP_MS`]) and between condition changes, so
//! the state is advanced segment by segment with exact rectangles: on every read, on every
//! change and on a background tick. The registers and the truth are two sums over the same
//! segments, which makes the truth exact to floating-point rounding.
//!
//! Without an `[area]` section meters are independent: no supply, no truth file.

use super::config::{MeterConditions, Profile, Role, SimAreaConfig, SimMeterConfig};
use super::profile::{self, STEP_MS};
use super::truth::{TruthLog, TruthRecord};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// Per-phase voltage factors: a small, fixed imbalance so phases are distinguishable.
const PHASE_VOLTAGE: [f64; 3] = [1.000, 1.004, 0.997];
/// Below this a phase counts as dead: no current is drawn through it.
const DEAD_VOLTAGE_V: f64 = 1.0;

/// Cumulative registers of a meter, in the register's own (secondary-side) units.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Registers {
    pub import_kwh: f64,
    pub export_kwh: f64,
    pub reactive_import_kvarh: f64,
    pub reactive_export_kvarh: f64,
}

/// What a meter shows at an instant: its registers and instantaneous values, register units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MeterView {
    pub registers: Registers,
    pub voltage_v: [f64; 3],
    pub current_a: [f64; 3],
    pub phase_power_kw: [f64; 3],
    pub power_kw: f64,
    pub power_factor: f64,
}

/// One meter where it is installed: the fixed facts of the file, the conditions that change
/// at run time, and its registers.
#[derive(Debug, Clone)]
struct Installation {
    id: String,
    role: Option<Role>,
    three_phase: bool,
    multiplier: f64,
    profile: Profile,
    seed: u64,
    export: bool,
    conditions: MeterConditions,
    replace_at_ms: Option<i64>,
    replacement_start_kwh: f64,
    replaced: bool,
    registers: Registers,
}

/// The flows of one meter during a segment, kW.
#[derive(Debug, Clone, Copy, Default)]
struct Flow {
    /// The customer's true consumption (0 for the supply meter).
    true_load_kw: f64,
    /// PV generation of the customer.
    pv_kw: f64,
    /// Bypassed load (theft).
    theft_kw: f64,
    /// Primary-side net power through the meter, as an honest meter would measure it.
    metered_kw: f64,
    /// Per-phase power the meter shows, register units, signed (reversed wiring negative).
    phase_kw: [f64; 3],
    /// Whether the energy registers advance.
    registering: bool,
}

impl Flow {
    fn shown_kw(&self) -> f64 {
        self.phase_kw.iter().sum()
    }
}

/// All flows of a segment.
struct Flows {
    meters: Vec<Flow>,
    technical_kw: f64,
}

/// Energy sums over a span, kWh, primary side; per installation where per meter.
#[derive(Debug, Clone, Default)]
pub(crate) struct Energies {
    pub supply_kwh: f64,
    pub sales_kwh: f64,
    pub true_load_kwh: f64,
    pub technical_loss_kwh: f64,
    pub theft_kwh: f64,
    pub pv_kwh: f64,
    /// True metered energy (import − export) of each installation.
    pub metered_kwh: Vec<f64>,
    /// Energy its registers counted (import − export, × multiplier).
    pub registered_kwh: Vec<f64>,
}

impl Energies {
    pub(crate) fn new(n: usize) -> Energies {
        Energies {
            metered_kwh: vec![0.0; n],
            registered_kwh: vec![0.0; n],
            ..Energies::default()
        }
    }
}

/// The area's own parameters.
#[derive(Debug, Clone)]
struct AreaSetup {
    id: String,
    supply: usize,
    loss_coeff: f64,
    no_load_loss_kw: f64,
}

struct AreaState {
    start_ms: i64,
    at_ms: i64,
    installations: Vec<Installation>,
    setup: Option<AreaSetup>,
    totals: Energies,
    truth: Option<TruthLog>,
}

/// The simulator's electrical model, shared by every bus (lock order: a bus's meters, then
/// this).
pub(crate) struct Area {
    origin: Instant,
    origin_ms: i64,
    state: Mutex<AreaState>,
}

impl Area {
    /// Builds the model of `meters` (in file order: the index of each installation) starting
    /// at `origin` = wall-clock `origin_ms`. `three_phase[i]` comes from meter `i`'s model.
    pub fn new(
        meters: &[SimMeterConfig],
        three_phase: &[bool],
        area: Option<&SimAreaConfig>,
        origin: Instant,
        origin_ms: i64,
    ) -> std::io::Result<Area> {
        let installations: Vec<Installation> = meters
            .iter()
            .zip(three_phase)
            .map(|(m, &three_phase)| Installation {
                id: m.id.clone(),
                role: if area.is_some() { m.role } else { None },
                three_phase,
                multiplier: m.multiplier,
                profile: m.profile,
                seed: m.seed,
                export: m.export,
                conditions: m.conditions.clone(),
                replace_at_ms: m
                    .replaced_at_s
                    .map(|s| origin_ms + (s * 1000.0).round() as i64),
                replacement_start_kwh: m.replacement_start_kwh,
                replaced: false,
                registers: if m.export {
                    Registers {
                        export_kwh: m.energy_start_kwh,
                        ..Registers::default()
                    }
                } else {
                    Registers {
                        import_kwh: m.energy_start_kwh,
                        ..Registers::default()
                    }
                },
            })
            .collect();
        let setup = area.map(|a| AreaSetup {
            id: a.id.clone(),
            supply: installations
                .iter()
                .position(|i| i.role == Some(Role::Supply))
                .unwrap_or(0),
            loss_coeff: a.loss_coeff,
            no_load_loss_kw: a.no_load_loss_kw,
        });
        let n = installations.len();
        let truth = match area.and_then(|a| a.truth.as_ref().map(|p| (a, p))) {
            Some((a, path)) => Some(TruthLog::open(
                path,
                a.truth_interval_s as i64 * 1000,
                origin_ms,
                n,
            )?),
            None => None,
        };
        Ok(Area {
            origin,
            origin_ms,
            state: Mutex::new(AreaState {
                start_ms: origin_ms,
                at_ms: origin_ms,
                installations,
                setup,
                totals: Energies::new(n),
                truth,
            }),
        })
    }

    /// The model's time (wall-clock milliseconds, advancing with the monotonic clock) at `t`.
    pub fn ms_at(&self, t: Instant) -> i64 {
        self.origin_ms + t.saturating_duration_since(self.origin).as_millis() as i64
    }

    fn state(&self) -> MutexGuard<'_, AreaState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Integrates everything up to `t` (and writes the truth intervals that closed).
    pub fn advance(&self, t: Instant) {
        let to = self.ms_at(t);
        self.state().advance(to);
    }

    /// What meter `index` shows at `t`.
    pub fn view(&self, index: usize, t: Instant) -> MeterView {
        let to = self.ms_at(t);
        let mut s = self.state();
        s.advance(to);
        s.view(index)
    }

    /// The conditions of meter `index`.
    pub fn conditions(&self, index: usize) -> MeterConditions {
        self.state().installations[index].conditions.clone()
    }

    /// Changes the conditions of meter `index` from `t` on; everything before is kept.
    pub fn set_conditions(&self, index: usize, conditions: MeterConditions, t: Instant) {
        let to = self.ms_at(t);
        let mut s = self.state();
        s.advance(to);
        s.installations[index].conditions = conditions;
    }

    /// The true energies from the start up to `t`, for comparing with registers read at about
    /// the same moment; `None` without an `[area]`.
    pub fn truth_until(&self, t: Instant) -> Option<TruthRecord> {
        let to = self.ms_at(t);
        let mut s = self.state();
        s.advance(to);
        let setup = s.setup.as_ref()?;
        Some(TruthRecord::new(
            &setup.id,
            s.start_ms,
            s.at_ms,
            false,
            &s.ids(),
            &s.totals,
        ))
    }
}

impl AreaState {
    fn ids(&self) -> Vec<String> {
        self.installations.iter().map(|i| i.id.clone()).collect()
    }

    /// True while the supply meter has lost its voltage: the whole area is out.
    fn area_out(&self) -> bool {
        self.setup
            .as_ref()
            .is_some_and(|a| self.installations[a.supply].conditions.voltage_lost)
    }

    /// The flows during the segment starting at `t`.
    fn flows(&self, t: i64) -> Flows {
        let area_out = self.area_out();
        let mut meters: Vec<Flow> = self
            .installations
            .iter()
            .map(|inst| {
                let c = &inst.conditions;
                let customer = inst.role == Some(Role::Customer);
                let unsupplied = c.voltage_lost || (area_out && customer);
                if unsupplied || inst.role == Some(Role::Supply) {
                    return Flow::default();
                }
                let load = c.load_kw * profile::factor(inst.profile, inst.seed, t);
                let (true_load_kw, pv_kw) = if inst.export {
                    (0.0, load)
                } else {
                    (load, c.pv_kw)
                };
                let theft_start = self.start_ms + (c.theft_from_s * 1000.0).round() as i64;
                let theft_kw = if t >= theft_start {
                    true_load_kw * c.theft_fraction
                } else {
                    0.0
                };
                Flow {
                    true_load_kw,
                    pv_kw,
                    theft_kw,
                    metered_kw: true_load_kw - theft_kw - pv_kw,
                    ..Flow::default()
                }
            })
            .collect();
        let mut technical_kw = 0.0;
        if let Some(a) = &self.setup
            && !area_out
        {
            let customers = || {
                self.installations
                    .iter()
                    .zip(&meters)
                    .filter(|(i, _)| i.role == Some(Role::Customer))
                    .map(|(_, f)| f)
            };
            let load: f64 = customers().map(|f| f.true_load_kw).sum();
            let pv: f64 = customers().map(|f| f.pv_kw).sum();
            technical_kw = a.loss_coeff * load * load + a.no_load_loss_kw;
            meters[a.supply].metered_kw = load - pv + technical_kw;
        }
        for (inst, flow) in self.installations.iter().zip(meters.iter_mut()) {
            let c = &inst.conditions;
            let sign = if c.reversed { -1.0 } else { 1.0 };
            let shown = if c.voltage_lost {
                0.0
            } else {
                flow.metered_kw / inst.multiplier * c.register_scale * sign
            };
            let weights = inst.weights();
            for (p, w) in weights.iter().enumerate() {
                let lost = c.phase_loss.is_some_and(|l| l.index() == p);
                flow.phase_kw[p] = if lost { 0.0 } else { shown * w };
            }
            flow.registering = !c.stopped;
        }
        Flows {
            meters,
            technical_kw,
        }
    }

    /// Replaces the meters whose replacement time has come.
    fn replace_due(&mut self) {
        let at = self.at_ms;
        for inst in &mut self.installations {
            if !inst.replaced && inst.replace_at_ms.is_some_and(|r| at >= r) {
                inst.replaced = true;
                inst.registers = if inst.export {
                    Registers {
                        export_kwh: inst.replacement_start_kwh,
                        ..Registers::default()
                    }
                } else {
                    Registers {
                        import_kwh: inst.replacement_start_kwh,
                        ..Registers::default()
                    }
                };
            }
        }
    }

    /// The end of the segment starting now: the next profile step, truth boundary, theft
    /// start or replacement, or `to`.
    fn segment_end(&self, to: i64) -> i64 {
        let at = self.at_ms;
        let next = |period: i64| (at.div_euclid(period) + 1) * period;
        let mut end = to.min(next(STEP_MS));
        if let Some(log) = &self.truth {
            end = end.min(next(log.interval_ms));
        }
        for inst in &self.installations {
            let theft = self.start_ms + (inst.conditions.theft_from_s * 1000.0).round() as i64;
            for event in [Some(theft), inst.replace_at_ms.filter(|_| !inst.replaced)]
                .into_iter()
                .flatten()
            {
                if event > at {
                    end = end.min(event);
                }
            }
        }
        end
    }

    fn advance(&mut self, to: i64) {
        loop {
            self.replace_due();
            if self.at_ms >= to {
                return;
            }
            let end = self.segment_end(to);
            let hours = (end - self.at_ms) as f64 / 3_600_000.0;
            let flows = self.flows(self.at_ms);
            let mut span = Energies::new(self.installations.len());
            let supply = self.setup.as_ref().map(|a| a.supply);
            for (i, (inst, flow)) in self.installations.iter_mut().zip(&flows.meters).enumerate() {
                let kwh = if flow.registering {
                    flow.shown_kw() * hours
                } else {
                    0.0
                };
                let kvarh = kwh.abs() * inst.tan_phi();
                let r = &mut inst.registers;
                if kwh >= 0.0 {
                    r.import_kwh += kwh;
                    r.reactive_import_kvarh += kvarh;
                } else {
                    r.export_kwh -= kwh;
                    r.reactive_export_kvarh += kvarh;
                }
                span.metered_kwh[i] = flow.metered_kw * hours;
                span.registered_kwh[i] = kwh * inst.multiplier;
                if Some(i) == supply {
                    span.supply_kwh = flow.metered_kw * hours;
                } else if inst.role == Some(Role::Customer) {
                    span.sales_kwh += flow.metered_kw * hours;
                    span.true_load_kwh += flow.true_load_kw * hours;
                    span.theft_kwh += flow.theft_kw * hours;
                    span.pv_kwh += flow.pv_kw * hours;
                }
            }
            span.technical_loss_kwh = flows.technical_kw * hours;
            add(&mut self.totals, &span);
            self.at_ms = end;
            if let (Some(log), Some(setup)) = (&mut self.truth, &self.setup) {
                let ids: Vec<String> = self.installations.iter().map(|i| i.id.clone()).collect();
                log.add(&span, end, &setup.id, &ids);
            }
        }
    }

    fn view(&self, index: usize) -> MeterView {
        let inst = &self.installations[index];
        let flow = self.flows(self.at_ms).meters[index];
        let c = &inst.conditions;
        let mut voltage_v = [0.0; 3];
        let mut current_a = [0.0; 3];
        for p in 0..3 {
            let nominal =
                c.voltage_v * PHASE_VOLTAGE[p] * c.sag.unwrap_or(1.0) * c.swell.unwrap_or(1.0);
            let set = [c.voltage_l1_v, c.voltage_l2_v, c.voltage_l3_v][p];
            let lost = c.voltage_lost || c.phase_loss.is_some_and(|l| l.index() == p);
            voltage_v[p] = if lost { 0.0 } else { set.unwrap_or(nominal) };
            if voltage_v[p] >= DEAD_VOLTAGE_V {
                current_a[p] = flow.phase_kw[p].abs() * 1000.0 / (voltage_v[p] * c.power_factor);
            }
        }
        if !inst.three_phase {
            voltage_v[1] = 0.0;
            voltage_v[2] = 0.0;
        }
        MeterView {
            registers: inst.registers,
            voltage_v,
            current_a,
            phase_power_kw: flow.phase_kw,
            power_kw: flow.shown_kw(),
            power_factor: c.power_factor,
        }
    }
}

impl Installation {
    fn tan_phi(&self) -> f64 {
        let pf = self.conditions.power_factor.clamp(1e-3, 1.0);
        (1.0 - pf * pf).sqrt() / pf
    }

    /// How the meter's power splits across l1..l3.
    fn weights(&self) -> [f64; 3] {
        if !self.three_phase {
            return [1.0, 0.0, 0.0];
        }
        match self.conditions.unbalance {
            Some(w) => {
                let sum: f64 = w.iter().sum();
                w.map(|x| x / sum)
            }
            None => [1.0 / 3.0; 3],
        }
    }
}

/// `total += span`.
pub(crate) fn add(total: &mut Energies, span: &Energies) {
    total.supply_kwh += span.supply_kwh;
    total.sales_kwh += span.sales_kwh;
    total.true_load_kwh += span.true_load_kwh;
    total.technical_loss_kwh += span.technical_loss_kwh;
    total.theft_kwh += span.theft_kwh;
    total.pv_kwh += span.pv_kwh;
    for (t, s) in total.metered_kwh.iter_mut().zip(&span.metered_kwh) {
        *t += s;
    }
    for (t, s) in total.registered_kwh.iter_mut().zip(&span.registered_kwh) {
        *t += s;
    }
}

/// `ids[i] → values[i]`.
pub(crate) fn by_id(ids: &[String], values: &[f64]) -> BTreeMap<String, f64> {
    ids.iter().cloned().zip(values.iter().copied()).collect()
}

#[cfg(test)]
#[path = "area_tests.rs"]
mod tests;
