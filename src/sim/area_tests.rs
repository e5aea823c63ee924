//! Area model tests on a synthetic clock: the supply meter measures the customers plus the
//! technical loss minus PV, registers and truth integrate the same functions exactly, and
//! every scenario and staging knob shows where it should.

use super::*;
use crate::sim::SimConfig;
use crate::sim::truth::read_truth;
use std::path::Path;
use std::time::Duration;

/// A wall-clock start on a profile step and an hour boundary.
const ORIGIN_MS: i64 = 1_795_003_200_000;

const AREA: &str = r#"
[[bus]]
name = "b"
link = "x"
[area]
loss_coeff = 0.0005
no_load_loss_kw = 0.2
[[meter]]
bus = "b"
model = "m"
unit = 1
id = "supply"
role = "supply"
multiplier = 60.0
energy_start_kwh = 100.0
[[meter]]
bus = "b"
model = "m"
unit = 11
id = "flat"
role = "customer"
load_kw = 10.0
energy_start_kwh = 500.0
[[meter]]
bus = "b"
model = "m"
unit = 12
id = "home"
role = "customer"
profile = "residential"
seed = 1
load_kw = 5.0
[[meter]]
bus = "b"
model = "m"
unit = 13
id = "solar"
role = "customer"
profile = "random-walk"
seed = 2
load_kw = 4.0
pv_kw = 3.0
"#;

struct Fixture {
    area: Area,
    t0: Instant,
}

impl Fixture {
    fn at(&self, s: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(s)
    }
    fn view(&self, index: usize, s: f64) -> MeterView {
        self.area.view(index, self.at(s))
    }
    fn truth(&self, s: f64) -> TruthRecord {
        self.area.truth_until(self.at(s)).unwrap()
    }
    fn change(&self, index: usize, s: f64, f: impl FnOnce(&mut MeterConditions)) {
        let mut c = self.area.conditions(index);
        f(&mut c);
        self.area.set_conditions(index, c, self.at(s));
    }
}

/// The area of `AREA` with `extra` appended (keys of its last meter), the supply meter
/// three-phase, the customers single-phase.
fn fixture(extra: &str, dir: &Path) -> Fixture {
    let config = SimConfig::parse(&format!("{AREA}{extra}"), "t.toml", dir).unwrap();
    let three_phase: Vec<bool> = config.meters.iter().map(|m| m.unit == 1).collect();
    let t0 = Instant::now();
    let area = Area::new(
        &config.meters,
        &three_phase,
        config.area.as_ref(),
        t0,
        ORIGIN_MS,
    )
    .unwrap();
    Fixture { area, t0 }
}

fn close(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance
}

#[test]
fn supply_is_customers_plus_technical_loss_minus_pv() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture("", dir.path());
    let hours = 2.0;
    let end = hours * 3600.0;
    let truth = f.truth(end);

    // The same sums computed independently, step by step.
    let (mut load, mut pv, mut technical) = (0.0, 0.0, 0.0);
    for k in 0..(end as i64 / 10) {
        let t = ORIGIN_MS + k * STEP_MS;
        let l = 10.0
            + 5.0 * profile::factor(Profile::Residential, 1, t)
            + 4.0 * profile::factor(Profile::RandomWalk, 2, t);
        load += l / 360.0;
        pv += 3.0 / 360.0;
        technical += (0.0005 * l * l + 0.2) / 360.0;
    }
    assert!(close(truth.true_load_kwh, load, 1e-9), "{truth:?}");
    assert!(close(truth.pv_kwh, pv, 1e-9));
    assert!(close(truth.technical_loss_kwh, technical, 1e-9));
    assert!(close(truth.supply_kwh, load - pv + technical, 1e-9));
    assert!(close(truth.sales_kwh, load - pv, 1e-9));
    assert!(close(truth.loss_kwh, technical, 1e-9));
    assert_eq!(truth.theft_kwh, 0.0);

    // Registers: the supply meter holds primary / 60; every meter matches its truth.
    let supply = f.view(0, end).registers;
    assert!(close(
        (supply.import_kwh - 100.0) * 60.0,
        truth.supply_kwh,
        1e-9
    ));
    assert!(close(truth.meters["supply"], truth.supply_kwh, 1e-9));
    let flat = f.view(1, end).registers;
    assert!(close(flat.import_kwh - 500.0, 10.0 * hours, 1e-9));
    for (id, kwh) in &truth.meters {
        assert!(close(truth.registered[id], *kwh, 1e-9), "{id}");
    }
    // Loads vary from step to step, so interval figures are not trivial.
    let p1 = f.view(2, end).power_kw;
    let p2 = f.view(2, end + 60.0).power_kw;
    assert_ne!(p1, p2);
}

#[test]
fn truth_is_exact_whatever_the_read_times() {
    let dir = tempfile::tempdir().unwrap();
    let a = fixture("", dir.path());
    let b = fixture("", dir.path());
    // One area is read at odd moments, the other only at the end.
    let mut s = 0.0;
    while s < 1800.0 {
        a.view(0, s);
        s += 7.31;
    }
    let (ta, tb) = (a.truth(1800.0), b.truth(1800.0));
    assert!(close(ta.supply_kwh, tb.supply_kwh, 1e-9));
    assert!(close(
        a.view(0, 1800.0).registers.import_kwh,
        b.view(0, 1800.0).registers.import_kwh,
        1e-9
    ));
}

#[test]
fn theft_shows_in_the_supply_not_in_the_meter() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture("", dir.path());
    f.change(1, 0.0, |c| {
        c.theft_fraction = 0.3;
        c.theft_from_s = 600.0;
    });
    let before = f.truth(600.0);
    assert_eq!(before.theft_kwh, 0.0);
    let t = f.truth(1200.0);
    assert!(close(t.theft_kwh, 0.3 * 10.0 / 6.0, 1e-9));
    assert!(close(t.loss_kwh, t.technical_loss_kwh + t.theft_kwh, 1e-9));
    let flat = f.view(1, 1200.0);
    assert!(close(
        flat.registers.import_kwh - 500.0,
        10.0 / 6.0 + 7.0 / 6.0,
        1e-9
    ));
    assert!(close(flat.power_kw, 7.0, 1e-9));
}

#[test]
fn stopped_register_stands_still_while_current_flows() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture("", dir.path());
    f.change(1, 0.0, |c| c.stopped = true);
    let v = f.view(1, 3600.0);
    assert_eq!(v.registers.import_kwh, 500.0);
    assert!(v.current_a[0] > 40.0, "{v:?}");
    let t = f.truth(3600.0);
    assert!(close(t.meters["flat"], 10.0, 1e-9));
    assert_eq!(t.registered["flat"], 0.0);
}

#[test]
fn reversed_wiring_advances_the_export_register() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture("", dir.path());
    f.change(1, 0.0, |c| c.reversed = true);
    let v = f.view(1, 3600.0);
    assert_eq!(v.registers.import_kwh, 500.0);
    assert!(close(v.registers.export_kwh, 10.0, 1e-9));
    assert!(close(v.power_kw, -10.0, 1e-9));
}

#[test]
fn register_scale_and_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(
        "replaced_at_s = 1800.0\nreplacement_start_kwh = 2.0\n",
        dir.path(),
    );
    f.change(1, 0.0, |c| c.register_scale = 2.0);
    let before = f.view(3, 1799.999).registers;
    let after = f.view(3, 1800.0).registers;
    assert!(before.import_kwh > 0.0);
    assert_eq!((after.import_kwh, after.export_kwh), (2.0, 0.0));
    let t = f.truth(3600.0);
    let end = f.view(3, 3600.0).registers;
    // What the registers counted, without the replacement's jump (1 ms of flow unseen).
    let counted = (before.import_kwh - before.export_kwh) + (end.import_kwh - 2.0 - end.export_kwh);
    assert!(
        close(t.registered["solar"], counted, 1e-4),
        "{counted} {t:?}"
    );
    assert!(close(t.registered["solar"], t.meters["solar"], 1e-9));
    assert!(close(
        f.view(1, 3600.0).registers.import_kwh - 500.0,
        20.0,
        1e-9
    ));
    assert!(close(t.registered["flat"], 20.0, 1e-9));
}

#[test]
fn pv_above_load_exports() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture("", dir.path());
    f.change(3, 0.0, |c| {
        c.load_kw = 0.0;
        c.pv_kw = 5.0;
    });
    let v = f.view(3, 3600.0);
    assert!(close(v.registers.export_kwh, 5.0, 1e-9));
    let t = f.truth(3600.0);
    assert!(close(t.meters["solar"], -5.0, 1e-9));
}

#[test]
fn staged_voltages_phases_and_outage() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture("", dir.path());
    let nominal = f.view(0, 0.0);
    assert!(close(nominal.voltage_v[0], 230.0, 1e-9));

    f.change(0, 10.0, |c| c.sag = Some(0.8));
    assert!(close(f.view(0, 10.0).voltage_v[0], 184.0, 1e-9));
    f.change(0, 20.0, |c| {
        c.sag = None;
        c.swell = Some(1.1);
        c.voltage_l3_v = Some(250.0);
    });
    let v = f.view(0, 20.0);
    assert!(close(v.voltage_v[1], 230.0 * 1.004 * 1.1, 1e-9));
    assert_eq!(v.voltage_v[2], 250.0);

    // Phase loss: no voltage, no current, 2/3 registered.
    f.change(0, 3600.0, |c| {
        c.swell = None;
        c.voltage_l3_v = None;
        c.phase_loss = Some(crate::sim::Phase::L2);
    });
    let v = f.view(0, 3600.0);
    assert_eq!((v.voltage_v[1], v.current_a[1]), (0.0, 0.0));
    assert!(v.current_a[0] > 0.0 && v.current_a[2] > 0.0);
    let t0 = f.truth(3600.0);
    let r0 = f.view(0, 3600.0).registers.import_kwh;
    let t1 = f.truth(7200.0);
    let r1 = f.view(0, 7200.0).registers.import_kwh;
    assert!(close(
        (r1 - r0) * 60.0,
        (t1.supply_kwh - t0.supply_kwh) * 2.0 / 3.0,
        1e-9
    ));

    // Unbalance: currents follow the weights.
    f.change(0, 7200.0, |c| {
        c.phase_loss = None;
        c.unbalance = Some([1.0, 0.5, 0.25]);
    });
    let v = f.view(0, 7200.0);
    assert!(close(
        v.current_a[1] / v.current_a[0],
        0.5 * 1.004f64.recip(),
        1e-9
    ));
    assert!(close(
        v.current_a[2] / v.current_a[0],
        0.25 * 0.997f64.recip(),
        1e-9
    ));

    // The supply meter loses its voltage: the whole area is out.
    f.change(0, 10800.0, |c| c.voltage_lost = true);
    let before = f.truth(10800.0);
    let after = f.truth(14400.0);
    assert_eq!(after.supply_kwh, before.supply_kwh);
    assert_eq!(after.true_load_kwh, before.true_load_kwh);
    let v = f.view(0, 14400.0);
    assert_eq!(v.voltage_v, [0.0; 3]);
    assert_eq!(v.current_a, [0.0; 3]);
    assert_eq!(f.view(1, 14400.0).power_kw, 0.0);

    // A customer's own voltage loss: its load is not supplied.
    f.change(0, 14400.0, |c| c.voltage_lost = false);
    f.change(1, 14400.0, |c| c.voltage_lost = true);
    let a = f.truth(14400.0);
    let b = f.truth(18000.0);
    assert!(close(b.meters["flat"], a.meters["flat"], 1e-12));
    assert!(b.supply_kwh > a.supply_kwh);
}

#[test]
fn truth_file_has_aligned_intervals_that_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let text = AREA.replace(
        "[area]\n",
        "[area]\ntruth = \"truth.jsonl\"\ntruth_interval_s = 60\n",
    );
    let config = SimConfig::parse(&text, "t.toml", dir.path()).unwrap();
    let t0 = Instant::now();
    // Start 25 s into a minute: the first record is partial.
    let start = ORIGIN_MS + 25_000;
    let area = Area::new(
        &config.meters,
        &[true, false, false, false],
        config.area.as_ref(),
        t0,
        start,
    )
    .unwrap();
    area.advance(t0 + Duration::from_secs(200));
    let total = area.truth_until(t0 + Duration::from_secs(200)).unwrap();
    let records = read_truth(&dir.path().join("truth.jsonl")).unwrap();
    assert_eq!(records.len(), 3, "{records:?}");
    assert!(records[0].partial);
    assert_eq!(records[0].start_ms, start);
    for r in &records[1..] {
        assert!(!r.partial);
        assert_eq!(r.start_ms % 60_000, 0);
        assert_eq!(r.end_ms - r.start_ms, 60_000);
        assert_eq!(r.start, crate::clock::rfc3339_ms(r.start_ms));
        assert!(close(r.loss_kwh, r.technical_loss_kwh + r.theft_kwh, 1e-9));
        assert!(close(
            r.loss_pct.unwrap(),
            r.loss_kwh / r.supply_kwh * 100.0,
            1e-9
        ));
    }
    assert_eq!(records[2].end_ms, ORIGIN_MS + 180_000);
    // The records and the remainder add up to the totals.
    let rest = area
        .truth_until(t0 + Duration::from_secs(200))
        .unwrap()
        .supply_kwh;
    let summed: f64 = records.iter().map(|r| r.supply_kwh).sum();
    assert_eq!(rest, total.supply_kwh);
    let tail = total.supply_kwh - summed;
    assert!(
        tail > 0.0 && tail < total.supply_kwh * 45.0 / 175.0,
        "{tail}"
    );
}
