//! One scenario per alarm kind, with synthetic readings and timestamps: raised once with the
//! right values, cleared once when the condition ends; plus no storms, the single outage, and
//! survival across a restart.

use super::*;
use crate::bus::OfflinePolicy;
use crate::model::Reading;
use crate::model::{MeterHealth, MeterStatus};
use crate::uplink::contract::{Topics, active_alarms_message, alarm_message};

const T0: i64 = 1_795_000_000_000;
const S: i64 = 1000;
const MIN: i64 = 60 * S;

fn reading(meter: &str, ts_ms: i64, values: &[(&str, f64)]) -> Reading {
    Reading {
        meter: meter.to_string(),
        ts_ms,
        values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    }
}

fn status(meter: &str, bus: &str, ts_ms: i64, online: bool, last_ok_ms: i64) -> MeterStatus {
    let mut health = MeterHealth::new(&OfflinePolicy::default());
    health.online = Some(online);
    health.last_ok_ms = Some(last_ok_ms);
    health.consecutive_failures = if online { 0 } else { 3 };
    MeterStatus {
        meter: meter.to_string(),
        bus: bus.to_string(),
        unit: Some(1),
        address: None,
        items: None,
        health,
        change: crate::model::HealthChange::None,
        ts_ms,
    }
}

/// Area a1: supply s1 (three-phase, bus b1), customers c1..c3 on bus b2; t1 a three-phase
/// customer on b1; c4 alone on bus b3, consumption-only.
fn topology() -> Topology {
    let mut s1 = MeterRef::new("s1", "b1");
    s1.three_phase = true;
    s1.multiplier = 100.0;
    let mut t1 = MeterRef::new("t1", "b1");
    t1.three_phase = true;
    let mut c4 = MeterRef::new("c4", "b3");
    c4.consumption_only = true;
    Topology {
        gateway: "gw1".into(),
        meters: vec![
            s1,
            t1,
            MeterRef::new("c1", "b2"),
            MeterRef::new("c2", "b2"),
            MeterRef::new("c3", "b2"),
            c4,
        ],
        areas: vec![AreaRef {
            id: "a1".into(),
            supply: vec!["s1".into()],
            customers: vec!["t1".into(), "c1".into(), "c2".into(), "c3".into()],
            rated_kva: Some(100.0),
        }],
    }
}

fn engine() -> AlarmEngine {
    AlarmEngine::new(AlarmSettings::default(), topology())
}

fn topics() -> Topics {
    Topics::new("amr", "gw1")
}

/// Feeds `values` of one quantity, one per `step_ms`, starting at `start`; collects changes.
fn feed(
    e: &mut AlarmEngine,
    meter: &str,
    start: i64,
    step_ms: i64,
    rows: &[&[(&str, f64)]],
) -> Vec<AlarmChange> {
    let mut out = Vec::new();
    for (i, values) in rows.iter().enumerate() {
        out.extend(e.on_reading(&reading(meter, start + i as i64 * step_ms, values)));
    }
    out
}

fn of_kind(changes: &[AlarmChange], kind: AlarmKind) -> Vec<&AlarmChange> {
    changes.iter().filter(|c| c.alarm.kind == kind).collect()
}

fn transitions(changes: &[AlarmChange]) -> Vec<(AlarmKind, String, Transition)> {
    changes
        .iter()
        .map(|c| (c.alarm.kind, c.alarm.subject.clone(), c.transition))
        .collect()
}

#[test]
fn voltage_high_is_raised_once_and_cleared_once() {
    let mut e = engine();
    let v = |x: f64| -> Vec<(&str, f64)> { vec![("voltage_l1_v", x)] };
    let rows: Vec<Vec<(&str, f64)>> = [
        230.0, 230.0, 240.0, 241.0, 242.0, 240.0, 231.0, 230.0, 230.0,
    ]
    .iter()
    .map(|x| v(*x))
    .collect();
    let rows: Vec<&[(&str, f64)]> = rows.iter().map(|r| r.as_slice()).collect();
    let changes = feed(&mut e, "c1", T0, MIN, &rows);
    assert_eq!(
        transitions(&changes),
        vec![
            (AlarmKind::VoltageHigh, "c1.l1".into(), Transition::Raised),
            (AlarmKind::VoltageHigh, "c1.l1".into(), Transition::Cleared),
        ]
    );
    let raised = &changes[0];
    assert_eq!(raised.alarm.id, "voltage_high/c1.l1");
    assert_eq!(
        raised.alarm.raised_ms,
        T0 + 2 * MIN,
        "onset of the held run"
    );
    assert_eq!(
        raised.ts_ms,
        T0 + 3 * MIN,
        "decided after raise_after_s = 60"
    );
    assert_eq!(raised.alarm.value, 241.0);
    assert!((raised.alarm.threshold - 235.4).abs() < 1e-9);
    assert_eq!(raised.alarm.severity, Severity::Minor);
    assert_eq!(raised.alarm.details["phase"], "l1");

    let cleared = &changes[1];
    assert_eq!(cleared.alarm.cleared_ms, Some(T0 + 6 * MIN));
    assert_eq!(cleared.ts_ms, T0 + 7 * MIN);
    assert_eq!(cleared.alarm.details["peak"], 242.0);
    assert!(e.active().is_empty());

    let m = alarm_message(&topics(), raised);
    assert_eq!(m.topic, "amr/gw1/alarm/voltage_high/c1.l1");
    assert_eq!((m.qos, m.retain, m.sequenced), (1, false, true));
    let p = &m.payload;
    assert_eq!(p["state"], "raised");
    assert_eq!(p["kind"], "voltage_high");
    assert_eq!(p["subject"], "c1.l1");
    assert_eq!(p["severity"], "minor");
    assert_eq!(p["value"], 241.0);
    assert_eq!(p["threshold"], 235.4);
    assert_eq!(p["erc"], 24);
    assert_eq!(p["phase"], "l1");
    assert!(p["cleared"].is_null());
    assert!(p.get("duration_s").is_none());
    let p = alarm_message(&topics(), cleared).payload;
    assert_eq!(p["state"], "cleared");
    assert_eq!(p["duration_s"], 240.0);
    assert_eq!(p["value"], 230.0);
}

#[test]
fn voltage_low_is_raised_and_cleared() {
    let mut e = engine();
    let mut changes = Vec::new();
    for (i, x) in [220.0, 190.0, 192.0, 191.0, 199.5, 203.0, 205.0]
        .iter()
        .enumerate()
    {
        changes.extend(e.on_reading(&reading("c2", T0 + i as i64 * MIN, &[("voltage_l1_v", *x)])));
    }
    // 199.5 is above 198 but inside the 2 V hysteresis: no clearing starts there.
    assert_eq!(
        transitions(&changes),
        vec![
            (AlarmKind::VoltageLow, "c2.l1".into(), Transition::Raised),
            (AlarmKind::VoltageLow, "c2.l1".into(), Transition::Cleared),
        ]
    );
    assert_eq!(changes[0].alarm.value, 192.0);
    assert_eq!(changes[0].alarm.threshold, 198.0);
    assert_eq!(changes[1].alarm.cleared_ms, Some(T0 + 5 * MIN));
    assert_eq!(changes[1].alarm.details["peak"], 190.0);
}

#[test]
fn a_value_oscillating_around_the_threshold_raises_no_storm() {
    let mut e = engine();
    let mut changes = Vec::new();
    let mut t = T0;
    // Two hours wobbling across the upper limit faster than raise_after_s: nothing.
    for i in 0..240 {
        let v = if i % 2 == 0 { 237.0 } else { 234.0 };
        changes.extend(e.on_reading(&reading("c1", t, &[("voltage_l1_v", v)])));
        t += 30 * S;
    }
    assert!(changes.is_empty(), "{changes:?}");

    // Held high: raised once; then hours inside the hysteresis band: neither clear nor re-raise.
    for _ in 0..5 {
        changes.extend(e.on_reading(&reading("c1", t, &[("voltage_l1_v", 238.0)])));
        t += 30 * S;
    }
    for i in 0..480 {
        let v = if i % 2 == 0 { 236.0 } else { 234.0 };
        changes.extend(e.on_reading(&reading("c1", t, &[("voltage_l1_v", v)])));
        t += 30 * S;
    }
    // And wobbling across threshold − hysteresis faster than clear_after_s: still standing.
    for i in 0..240 {
        let v = if i % 2 == 0 { 232.0 } else { 236.0 };
        changes.extend(e.on_reading(&reading("c1", t, &[("voltage_l1_v", v)])));
        t += 30 * S;
    }
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].transition, Transition::Raised);
    for _ in 0..4 {
        changes.extend(e.on_reading(&reading("c1", t, &[("voltage_l1_v", 228.0)])));
        t += 30 * S;
    }
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[1].transition, Transition::Cleared);
}

#[test]
fn phase_loss_on_one_phase_is_not_an_under_voltage() {
    let mut e = engine();
    let three = |a: f64, b: f64, c: f64| {
        vec![
            ("voltage_l1_v", a),
            ("voltage_l2_v", b),
            ("voltage_l3_v", c),
            ("current_l2_a", 0.0),
        ]
    };
    let rows = [
        three(230.0, 230.0, 230.0),
        three(230.0, 3.0, 229.0),
        three(230.0, 2.0, 229.0),
        three(230.0, 0.0, 229.0),
        three(230.0, 225.0, 229.0),
        three(230.0, 226.0, 229.0),
    ];
    let rows: Vec<&[(&str, f64)]> = rows.iter().map(|r| r.as_slice()).collect();
    let changes = feed(&mut e, "t1", T0, MIN, &rows);
    assert_eq!(
        transitions(&changes),
        vec![
            (AlarmKind::PhaseLoss, "t1.l2".into(), Transition::Raised),
            (AlarmKind::PhaseLoss, "t1.l2".into(), Transition::Cleared),
        ]
    );
    let raised = &changes[0].alarm;
    assert_eq!(raised.raised_ms, T0 + MIN);
    assert_eq!(raised.value, 2.0);
    assert_eq!(raised.threshold, 132.0);
    assert_eq!(raised.details["voltages_v"]["l1"], 230.0);
    assert_eq!(raised.details["current_a"], 0.0);
    assert_eq!(alarm_message(&topics(), &changes[0]).payload["erc"], 10);
    assert_eq!(changes[1].alarm.cleared_ms, Some(T0 + 4 * MIN));
}

#[test]
fn current_unbalance_of_a_three_phase_meter() {
    let mut e = engine();
    let i3 = |a: f64, b: f64, c: f64| {
        vec![
            ("current_l1_a", a),
            ("current_l2_a", b),
            ("current_l3_a", c),
        ]
    };
    let rows = [
        i3(10.0, 10.0, 10.0),
        i3(10.0, 10.0, 5.0), // 50 %
        i3(10.0, 10.0, 5.0),
        i3(10.0, 10.0, 5.0),
        i3(10.0, 10.0, 5.0), // 900 s held: raised
        i3(10.0, 10.0, 7.2), // 28 %: inside hysteresis
        i3(10.0, 10.0, 9.0), // 10 %: clearing starts
        i3(10.0, 10.0, 9.0),
        i3(10.0, 10.0, 9.0),
        i3(10.0, 10.0, 9.0), // 900 s normal: cleared
        i3(0.1, 0.0, 0.0),   // no load: not judged
    ];
    let rows: Vec<&[(&str, f64)]> = rows.iter().map(|r| r.as_slice()).collect();
    let changes = feed(&mut e, "t1", T0, 5 * MIN, &rows);
    assert_eq!(
        transitions(&changes),
        vec![
            (AlarmKind::CurrentUnbalance, "t1".into(), Transition::Raised),
            (
                AlarmKind::CurrentUnbalance,
                "t1".into(),
                Transition::Cleared
            ),
        ]
    );
    assert_eq!(changes[0].ts_ms, T0 + 4 * 5 * MIN);
    assert_eq!(changes[0].alarm.value, 50.0);
    assert_eq!(changes[0].alarm.threshold, 30.0);
    assert_eq!(changes[0].alarm.details["min_a"], 5.0);
    assert_eq!(changes[1].alarm.cleared_ms, Some(T0 + 6 * 5 * MIN));
    assert_eq!(changes[1].ts_ms, T0 + 9 * 5 * MIN);
    // A single-phase meter is never judged.
    let none = feed(
        &mut e,
        "c1",
        T0,
        10 * MIN,
        &[&i3(10.0, 0.0, 0.0), &i3(10.0, 0.0, 0.0)],
    );
    assert!(of_kind(&none, AlarmKind::CurrentUnbalance).is_empty());
}

#[test]
fn overload_of_an_area_from_its_supply_meter() {
    let mut e = engine();
    let load = |kw: f64| vec![("power_kw", kw), ("power_factor", 0.9)];
    // 95 kW at pf 0.9 = 105.6 kVA on a 100 kVA transformer; 80 kW = 88.9 kVA (< 90).
    let rows = [
        load(60.0),
        load(95.0),
        load(95.0),
        load(96.0),
        load(85.0), // 94.4 kVA: inside hysteresis
        load(80.0),
        load(80.0),
        load(80.0),
    ];
    let rows: Vec<&[(&str, f64)]> = rows.iter().map(|r| r.as_slice()).collect();
    let changes = feed(&mut e, "s1", T0, 5 * MIN, &rows);
    assert_eq!(
        transitions(&changes),
        vec![
            (AlarmKind::Overload, "a1".into(), Transition::Raised),
            (AlarmKind::Overload, "a1".into(), Transition::Cleared),
        ]
    );
    let a = &changes[0].alarm;
    assert_eq!(a.subject_kind, SubjectKind::Area);
    assert_eq!(a.raised_ms, T0 + 5 * MIN);
    assert!((a.value - 96.0 / 0.9).abs() < 1e-9);
    assert_eq!(a.threshold, 100.0);
    assert_eq!(a.details["rated_kva"], 100.0);
    assert_eq!(changes[1].alarm.cleared_ms, Some(T0 + 25 * MIN));
    assert_eq!(changes[1].ts_ms, T0 + 35 * MIN);
}

#[test]
fn reverse_energy_on_a_consumption_only_meter() {
    let mut e = engine();
    let exp = |kwh: f64| vec![("energy_export_kwh", kwh)];
    let rows = [
        exp(3.00),
        exp(3.00),
        exp(3.05),
        exp(3.12), // 0.12 kWh exported in this run: raised
        exp(3.20),
        exp(3.20),
    ];
    let rows: Vec<&[(&str, f64)]> = rows.iter().map(|r| r.as_slice()).collect();
    let mut changes = feed(&mut e, "c4", T0, 15 * MIN, &rows);
    assert_eq!(changes.len(), 1);
    let a = &changes[0].alarm;
    assert_eq!(
        (a.kind, a.subject.as_str()),
        (AlarmKind::ReverseEnergy, "c4")
    );
    assert!((a.value - 0.12).abs() < 1e-9);
    assert_eq!(a.threshold, 0.1);
    // Still for an hour: cleared, at the first still read.
    for i in 6..10 {
        changes.extend(e.on_reading(&reading("c4", T0 + i * 15 * MIN, &exp(3.20))));
    }
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[1].transition, Transition::Cleared);
    assert_eq!(changes[1].alarm.cleared_ms, Some(T0 + 75 * MIN));
    // The same register on a bidirectional meter is never an alarm.
    let none = feed(&mut e, "c1", T0, 15 * MIN, &[&exp(1.0), &exp(5.0)]);
    assert!(none.is_empty());
}

#[test]
fn reading_down_is_raised_with_both_values() {
    let mut e = engine();
    let imp = |kwh: f64| vec![("energy_import_kwh", kwh)];
    let rows = [imp(100.0), imp(101.0), imp(50.0), imp(50.2)];
    let rows: Vec<&[(&str, f64)]> = rows.iter().map(|r| r.as_slice()).collect();
    let mut changes = feed(&mut e, "c1", T0, 15 * MIN, &rows);
    assert_eq!(
        transitions(&changes),
        vec![(AlarmKind::ReadingDown, "c1".into(), Transition::Raised)]
    );
    let a = &changes[0].alarm;
    assert_eq!(a.value, 51.0);
    assert_eq!(a.raised_ms, T0 + 30 * MIN);
    assert_eq!(a.details["previous_kwh"], 101.0);
    assert_eq!(a.details["current_kwh"], 50.0);
    assert_eq!(a.details["register"], "energy_import_kwh");
    assert_eq!(alarm_message(&topics(), &changes[0]).payload["erc"], 27);
    for i in 4..8 {
        changes.extend(e.on_reading(&reading(
            "c1",
            T0 + i * 15 * MIN,
            &imp(50.2 + i as f64 * 0.1),
        )));
    }
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[1].transition, Transition::Cleared);
    assert_eq!(changes[1].alarm.cleared_ms, Some(T0 + 45 * MIN));
    assert_eq!(changes[1].ts_ms, T0 + 105 * MIN);
}

#[test]
fn running_fast_beyond_rated_power() {
    let mut e = engine();
    let imp = |kwh: f64| vec![("energy_import_kwh", kwh)];
    // Single-phase default: 60 A × 230 V = 13.8 kW, +20 % = 16.56 kW; 0.5 kWh in 60 s = 30 kW.
    let rows = [imp(100.0), imp(100.1), imp(100.6), imp(100.7), imp(100.8)];
    let rows: Vec<&[(&str, f64)]> = rows.iter().map(|r| r.as_slice()).collect();
    let mut changes = feed(&mut e, "c1", T0, MIN, &rows);
    assert_eq!(
        transitions(&changes),
        vec![(AlarmKind::RunningFast, "c1".into(), Transition::Raised)]
    );
    let a = &changes[0].alarm;
    assert!((a.value - 30.0).abs() < 1e-6, "{}", a.value);
    assert!((a.threshold - 16.56).abs() < 1e-9);
    assert_eq!(a.details["rated_kw"], 13.8);
    for i in 5..20 {
        changes.extend(e.on_reading(&reading(
            "c1",
            T0 + i * MIN,
            &imp(100.8 + (i - 4) as f64 * 0.1),
        )));
    }
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[1].transition, Transition::Cleared);
    assert_eq!(changes[1].alarm.cleared_ms, Some(T0 + 3 * MIN));
    // A CT-connected supply meter scales its derived rating with its multiplier:
    // 41.4 kW × 100; 100 kWh in 5 minutes (1.2 MW) is within it.
    let big = feed(&mut e, "s1", T0, 5 * MIN, &[&imp(1000.0), &imp(1100.0)]);
    assert!(of_kind(&big, AlarmKind::RunningFast).is_empty());
}

#[test]
fn meter_stopped_while_load_flows() {
    let mut e = engine();
    let row = |kwh: f64, a: f64| vec![("energy_import_kwh", kwh), ("current_l1_a", a)];
    let mut changes = Vec::new();
    // Register still, 5 A flowing, a read every 5 minutes.
    for i in 0..9 {
        changes.extend(e.on_reading(&reading("c3", T0 + i * 5 * MIN, &row(42.0, 5.0))));
    }
    // The first still read with load is at 5 min; 30 minutes later (35 min) it is raised.
    assert_eq!(
        transitions(&changes),
        vec![(AlarmKind::MeterStopped, "c3".into(), Transition::Raised)]
    );
    assert_eq!(changes[0].ts_ms, T0 + 35 * MIN);
    assert_eq!(changes[0].alarm.raised_ms, T0 + 5 * MIN);
    assert_eq!(changes[0].alarm.value, 2100.0);
    assert_eq!(changes[0].alarm.threshold, 1800.0);
    assert_eq!(alarm_message(&topics(), &changes[0]).payload["erc"], 30);
    changes.extend(e.on_reading(&reading("c3", T0 + 45 * MIN, &row(42.4, 5.0))));
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[1].transition, Transition::Cleared);

    // Without load a still register is no alarm.
    let mut quiet = Vec::new();
    for i in 0..20 {
        quiet.extend(e.on_reading(&reading("c2", T0 + i * 5 * MIN, &row(7.0, 0.0))));
    }
    assert!(quiet.is_empty());
}

#[test]
fn an_exporting_meter_is_not_stopped() {
    let mut e = engine();
    // PV above the load (or reversed wiring): import still, export advancing, current flowing.
    let row = |export: f64| {
        vec![
            ("energy_import_kwh", 42.0),
            ("energy_export_kwh", export),
            ("current_l1_a", 12.0),
            ("power_kw", -2.6),
        ]
    };
    let mut changes = Vec::new();
    for i in 0..20 {
        changes.extend(e.on_reading(&reading("c1", T0 + i * 5 * MIN, &row(10.0 + i as f64))));
    }
    assert!(
        of_kind(&changes, AlarmKind::MeterStopped).is_empty(),
        "{changes:?}"
    );
    // Both registers still while current flows: stopped.
    for i in 20..30 {
        changes.extend(e.on_reading(&reading("c1", T0 + i * 5 * MIN, &row(29.0))));
    }
    assert_eq!(of_kind(&changes, AlarmKind::MeterStopped).len(), 1);
}

#[test]
fn line_loss_verdicts_go_through_the_same_lifecycle() {
    let mut e = engine();
    let d = serde_json::json!({"loss_pct": 15.0, "supply_kwh": 100.0, "sales_kwh": 85.0});
    let raised = e
        .raise_external(AlarmKind::HighLoss, "a1", 15.0, 10.0, d.clone(), T0)
        .expect("raised");
    assert_eq!(raised.alarm.subject_kind, SubjectKind::Area);
    assert_eq!(raised.alarm.severity, Severity::Major);
    assert!(
        e.raise_external(AlarmKind::HighLoss, "a1", 16.0, 10.0, d, T0 + 15 * MIN)
            .is_none()
    );
    let p = alarm_message(&topics(), &raised).payload;
    assert_eq!(p["erc"], 22);
    assert_eq!(p["supply_kwh"], 100.0);
    let cleared = e
        .clear_external(
            AlarmKind::HighLoss,
            "a1",
            4.0,
            serde_json::json!({"loss_pct": 4.0}),
            T0 + 30 * MIN,
        )
        .expect("cleared");
    assert_eq!(cleared.alarm.value, 4.0);
    assert_eq!(cleared.alarm.threshold, 10.0);
    assert_eq!(cleared.alarm.details["peak"], 16.0);
    assert_eq!(
        alarm_message(&topics(), &cleared).payload["duration_s"],
        1800.0
    );
    assert!(
        e.clear_external(
            AlarmKind::NegativeLoss,
            "a1",
            0.0,
            serde_json::json!({}),
            T0
        )
        .is_none()
    );
}

#[test]
fn meter_offline_with_its_last_good_time() {
    let mut e = engine();
    let last_ok = T0 - 3 * MIN;
    assert!(
        e.on_meter_status(&status("c4", "b3", T0 - 5 * MIN, true, T0 - 5 * MIN))
            .is_empty()
    );
    assert!(
        e.on_meter_status(&status("c4", "b3", T0, false, last_ok))
            .is_empty()
    );
    let mut changes = Vec::new();
    for i in 1..=10 {
        changes.extend(e.on_tick(T0 + i * MIN));
    }
    // Hold 600 s from the first offline report.
    assert_eq!(
        transitions(&changes),
        vec![(AlarmKind::MeterOffline, "c4".into(), Transition::Raised)]
    );
    let a = &changes[0].alarm;
    assert_eq!(changes[0].ts_ms, T0 + 10 * MIN);
    assert_eq!(a.raised_ms, T0);
    assert_eq!(a.value, 780.0, "seconds since the last good poll");
    assert_eq!(a.details["last_ok"], crate::clock::rfc3339_ms(last_ok));
    assert_eq!(a.details["bus"], "b3");
    assert_eq!(alarm_message(&topics(), &changes[0]).payload["erc"], 31);
    changes.extend(e.on_tick(T0 + 20 * MIN));
    assert_eq!(changes.len(), 1);
    changes.extend(e.on_meter_status(&status("c4", "b3", T0 + 30 * MIN, true, T0 + 30 * MIN)));
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[1].transition, Transition::Cleared);
    assert_eq!(
        alarm_message(&topics(), &changes[1]).payload["duration_s"],
        1800.0
    );
}

#[test]
fn a_whole_bus_going_silent_is_one_outage_and_no_meter_offline() {
    let mut e = engine();
    for m in ["c1", "c2", "c3"] {
        e.on_meter_status(&status(m, "b2", T0 - MIN, true, T0 - MIN));
    }
    let mut changes = Vec::new();
    changes.extend(e.on_meter_status(&status("c1", "b2", T0, false, T0 - MIN)));
    changes.extend(e.on_tick(T0 + 30 * S));
    changes.extend(e.on_meter_status(&status("c2", "b2", T0 + MIN, false, T0 - MIN)));
    changes.extend(e.on_meter_status(&status("c3", "b2", T0 + 2 * MIN, false, T0 - 30 * S)));
    for i in 3..120 {
        changes.extend(e.on_tick(T0 + i * MIN));
    }
    assert_eq!(
        transitions(&changes),
        vec![(AlarmKind::AreaOutage, "b2".into(), Transition::Raised)]
    );
    let a = &changes[0].alarm;
    assert_eq!(a.subject_kind, SubjectKind::Bus);
    assert_eq!(a.severity, Severity::Critical);
    assert_eq!(a.raised_ms, T0, "from the first meter gone");
    assert_eq!(a.details["cause"], "bus_silent");
    assert_eq!(a.details["meters_affected"], 3);
    assert_eq!(a.value, 3.0);
    assert_eq!(e.active().len(), 1);

    // Power back: the meters answer again; cleared after clear_after_s, duration from the
    // first meter gone to the first meter back.
    for m in ["c1", "c2", "c3"] {
        changes.extend(e.on_meter_status(&status(m, "b2", T0 + 120 * MIN, true, T0 + 120 * MIN)));
    }
    changes.extend(e.on_tick(T0 + 121 * MIN));
    changes.extend(e.on_tick(T0 + 130 * MIN));
    assert_eq!(
        transitions(&changes),
        vec![
            (AlarmKind::AreaOutage, "b2".into(), Transition::Raised),
            (AlarmKind::AreaOutage, "b2".into(), Transition::Cleared),
        ]
    );
    let p = alarm_message(&topics(), &changes[1]).payload;
    assert_eq!(p["duration_s"], 7200.0);
    assert!(e.active().is_empty());
    assert!(of_kind(&e.history(), AlarmKind::MeterOffline).is_empty());
}

#[test]
fn meters_going_offline_one_by_one_are_not_an_outage() {
    let mut e = engine();
    let mut changes = Vec::new();
    changes.extend(e.on_meter_status(&status("c1", "b2", T0, false, T0)));
    changes.extend(e.on_meter_status(&status("c2", "b2", T0, true, T0)));
    changes.extend(e.on_meter_status(&status("c3", "b2", T0, true, T0)));
    changes.extend(e.on_tick(T0 + 20 * MIN));
    changes.extend(e.on_meter_status(&status("c2", "b2", T0 + 60 * MIN, false, T0)));
    changes.extend(e.on_tick(T0 + 80 * MIN));
    // c3, the last one answering, goes too: alone, so it is its own meter_offline.
    changes.extend(e.on_meter_status(&status("c3", "b2", T0 + 100 * MIN, false, T0)));
    for i in 101..=115 {
        changes.extend(e.on_tick(T0 + i * MIN));
    }
    assert_eq!(
        transitions(&changes),
        vec![
            (AlarmKind::MeterOffline, "c1".into(), Transition::Raised),
            (AlarmKind::MeterOffline, "c2".into(), Transition::Raised),
            (AlarmKind::MeterOffline, "c3".into(), Transition::Raised),
        ]
    );
}

#[test]
fn supply_voltage_lost_is_an_area_outage_and_suppresses_meter_offline() {
    let mut e = engine();
    let v3 = |v: f64| {
        vec![
            ("voltage_l1_v", v),
            ("voltage_l2_v", v),
            ("voltage_l3_v", v),
        ]
    };
    let mut changes = Vec::new();
    changes.extend(e.on_reading(&reading("s1", T0, &v3(230.0))));
    changes.extend(e.on_reading(&reading("s1", T0 + MIN, &v3(0.0))));
    assert_eq!(
        transitions(&changes),
        vec![(AlarmKind::AreaOutage, "a1".into(), Transition::Raised)]
    );
    assert_eq!(changes[0].alarm.details["cause"], "supply_voltage_lost");
    // No phase loss, no under-voltage on a dead supply.
    // t1 (on b1 with s1, which keeps answering) goes silent: suppressed while the outage stands.
    changes.extend(e.on_meter_status(&status("s1", "b1", T0 + MIN, true, T0 + MIN)));
    changes.extend(e.on_meter_status(&status("t1", "b1", T0 + 2 * MIN, false, T0)));
    for i in 3..60 {
        changes.extend(e.on_tick(T0 + i * MIN));
    }
    assert_eq!(changes.len(), 1, "{:?}", transitions(&changes));
    changes.extend(e.on_reading(&reading("s1", T0 + 60 * MIN, &v3(228.0))));
    changes.extend(e.on_reading(&reading("s1", T0 + 61 * MIN, &v3(229.0))));
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[1].transition, Transition::Cleared);
    assert_eq!(
        alarm_message(&topics(), &changes[1]).payload["duration_s"],
        3540.0
    );
    // t1 still silent after restoration: its own hold starts now.
    let later: Vec<AlarmChange> = (62..=72).flat_map(|i| e.on_tick(T0 + i * MIN)).collect();
    assert_eq!(
        transitions(&later),
        vec![(AlarmKind::MeterOffline, "t1".into(), Transition::Raised)]
    );
    assert_eq!(later[0].ts_ms, T0 + 72 * MIN);
    assert_eq!(later[0].alarm.raised_ms, T0 + 2 * MIN, "offline since");
}

#[test]
fn an_active_alarm_survives_a_restart_without_being_raised_again() {
    let mut e = engine();
    let v = |x: f64| vec![("voltage_l1_v", x)];
    let before = feed(&mut e, "c1", T0, MIN, &[&v(240.0), &v(240.0), &v(240.0)]);
    assert_eq!(before.len(), 1);
    let saved = serde_json::to_string(&e.snapshot()).unwrap();

    let mut e = engine();
    let restored = e.restore(serde_json::from_str(&saved).unwrap(), T0 + 10 * MIN);
    assert!(restored.is_empty());
    assert_eq!(e.active().len(), 1);
    assert_eq!(e.history().len(), 1);
    let m = active_alarms_message(&topics(), &e.active(), T0 + 10 * MIN);
    assert_eq!(m.topic, "amr/gw1/alarm/active");
    assert_eq!((m.retain, m.sequenced), (true, false));
    assert_eq!(m.payload["count"], 1);
    assert_eq!(m.payload["alarms"][0]["id"], "voltage_high/c1.l1");

    let mut after = feed(
        &mut e,
        "c1",
        T0 + 10 * MIN,
        MIN,
        &[&v(241.0), &v(241.0), &v(241.0)],
    );
    assert!(after.is_empty(), "not raised twice: {after:?}");
    after.extend(feed(
        &mut e,
        "c1",
        T0 + 13 * MIN,
        MIN,
        &[&v(230.0), &v(230.0)],
    ));
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].transition, Transition::Cleared);
    assert_eq!(after[0].alarm.raised_ms, T0, "the original raise time");

    // A kind disabled meanwhile is cleared at restore, and the headend is told.
    let mut settings = AlarmSettings::default();
    settings.voltage.enabled = false;
    let mut e = AlarmEngine::new(settings, topology());
    let cleared = e.restore(serde_json::from_str(&saved).unwrap(), T0 + 10 * MIN);
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0].alarm.details["reason"], "disabled");
    assert!(e.active().is_empty());
}

#[test]
fn gateway_power_off_is_reported_at_start_up() {
    let mut e = engine();
    let changes = e.on_start(T0, Some(T0 - 3600 * S));
    assert_eq!(
        transitions(&changes),
        vec![
            (AlarmKind::PowerOff, "gw1".into(), Transition::Raised),
            (AlarmKind::PowerOff, "gw1".into(), Transition::Cleared),
        ]
    );
    let raised = alarm_message(&topics(), &changes[0]).payload;
    assert_eq!(raised["subject_kind"], "gateway");
    assert_eq!(raised["severity"], "info");
    assert_eq!(raised["erc"], 14);
    assert_eq!(raised["down_from"], crate::clock::rfc3339_ms(T0 - 3600 * S));
    assert_eq!(raised["down_to"], crate::clock::rfc3339_ms(T0));
    assert_eq!(raised["duration_s"], 3600.0);
    let cleared = alarm_message(&topics(), &changes[1]).payload;
    assert_eq!(cleared["duration_s"], 3600.0);
    assert_eq!(cleared["cleared"], crate::clock::rfc3339_ms(T0));
    assert_eq!(cleared["raised_value"], 3600.0, "like every clear");
    assert_eq!(cleared["peak"], 3600.0);
    assert!(raised.get("raised_value").is_none());
    assert!(e.active().is_empty());
    assert_eq!(e.history().len(), 2);

    assert!(
        engine().on_start(T0, Some(T0 - 60 * S)).is_empty(),
        "a restart"
    );
    assert!(engine().on_start(T0, None).is_empty(), "first start ever");
}

#[test]
fn history_is_bounded_and_messages_include_the_active_set() {
    let settings = AlarmSettings {
        history: 5,
        voltage: VoltageLimitSettings {
            raise_after_s: 0,
            clear_after_s: 0,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut e = AlarmEngine::new(settings, topology());
    let mut all = Vec::new();
    for i in 0..10 {
        let v = if i % 2 == 0 { 240.0 } else { 220.0 };
        all.extend(e.on_reading(&reading("c1", T0 + i * MIN, &[("voltage_l1_v", v)])));
    }
    assert_eq!(all.len(), 10);
    assert_eq!(e.history().len(), 5);
    assert_eq!(e.history().last(), all.last());
    let active = active_alarms_message(&topics(), &e.active(), T0);
    assert_eq!(active.topic, "amr/gw1/alarm/active");
}

#[test]
fn disabled_kinds_stay_silent_and_settings_read_from_toml() {
    let settings: AlarmSettings = toml::from_str(
        "history = 100\n[voltage]\nenabled = false\nupper_pct = 10.0\n[overload.rated_kva]\na2 = 250.0\n",
    )
    .unwrap();
    assert_eq!(settings.history, 100);
    assert!(!settings.voltage.enabled);
    assert_eq!(settings.voltage.lower_pct, -10.0);
    assert_eq!(settings.overload.rated_kva["a2"], 250.0);
    assert!(toml::from_str::<AlarmSettings>("[voltage]\nupper = 1.0\n").is_err());
    let mut e = AlarmEngine::new(settings, topology());
    let none = feed(
        &mut e,
        "c1",
        T0,
        MIN,
        &[&[("voltage_l1_v", 260.0)], &[("voltage_l1_v", 260.0)]],
    );
    assert!(none.is_empty());
    assert_eq!(
        AlarmKind::from_name("area_outage"),
        Some(AlarmKind::AreaOutage)
    );
    for k in AlarmKind::ALL {
        assert_eq!(AlarmKind::from_name(k.as_str()), Some(k));
    }
}

fn items_status(meter: &str, ts_ms: i64, items: crate::model::MeterItems) -> MeterStatus {
    MeterStatus {
        items: Some(Box::new(crate::model::MeterItems { ts_ms, ..items })),
        ..status(meter, "b2", ts_ms, true, ts_ms)
    }
}

#[test]
fn a_meter_clock_beyond_the_limit_is_named_with_what_to_do() {
    let mut e = engine();
    let skew = |s: f64| crate::model::MeterItems {
        clock_skew_s: Some(s),
        ..Default::default()
    };
    assert!(
        e.on_meter_status(&items_status("c1", T0, skew(120.0)))
            .is_empty()
    );
    let raised = e.on_meter_status(&items_status("c2", T0, skew(-610.0)));
    let raised = of_kind(&raised, AlarmKind::ClockSkew);
    assert_eq!(raised.len(), 1);
    let a = &raised[0].alarm;
    assert_eq!(
        (a.subject.as_str(), a.value, a.threshold),
        ("c2", 610.0, 300.0)
    );
    assert_eq!(a.details["correctable"], false);
    assert_eq!(AlarmKind::ClockSkew.erc(), Some(12));
    // The same read repeated with later states: nothing new; set right on site: cleared.
    assert!(
        e.on_meter_status(&items_status("c2", T0 + MIN, skew(-610.0)))
            .is_empty()
    );
    // Just inside the limit: within the hysteresis, still standing.
    let band = e.on_meter_status(&items_status("c2", T0 + MIN + S, skew(295.0)));
    assert!(band.is_empty(), "{band:?}");
    let cleared = e.on_meter_status(&items_status("c2", T0 + 2 * MIN, skew(1.0)));
    assert_eq!(
        transitions(&cleared),
        [(AlarmKind::ClockSkew, "c2".to_string(), Transition::Cleared)]
    );
}

#[test]
fn a_cover_open_increase_is_one_event_and_the_count_survives_a_restart() {
    let mut e = engine();
    let counts = |open: u64, down: u64, word: u16| crate::model::MeterItems {
        cover_open_count: Some(open),
        power_down_count: Some(down),
        status_word_1: Some(word),
        ..Default::default()
    };
    // The first count seen is the baseline.
    assert!(
        e.on_meter_status(&items_status("c1", T0, counts(3, 7, 0)))
            .is_empty()
    );
    let got = e.on_meter_status(&items_status("c1", T0 + MIN, counts(4, 7, 0)));
    assert_eq!(
        transitions(&got),
        [
            (
                AlarmKind::MeterCoverOpen,
                "c1".to_string(),
                Transition::Raised
            ),
            (
                AlarmKind::MeterCoverOpen,
                "c1".to_string(),
                Transition::Cleared
            ),
        ]
    );
    assert_eq!(got[0].alarm.details["previous_count"], 3);
    assert!(e.active().is_empty());
    assert!(
        e.on_meter_status(&items_status("c1", T0 + 2 * MIN, counts(4, 7, 0)))
            .is_empty()
    );
    // Across a restart: an increase while the gateway was down is still seen.
    let mut e2 = engine();
    e2.restore(e.snapshot(), T0 + 3 * MIN);
    let got = e2.on_meter_status(&items_status(
        "c1",
        T0 + 4 * MIN,
        counts(4, 9, 1 << 15 | 1 << 3),
    ));
    assert_eq!(
        transitions(&got),
        [
            (
                AlarmKind::MeterBatteryLow,
                "c1".to_string(),
                Transition::Raised
            ),
            (
                AlarmKind::MeterClockFault,
                "c1".to_string(),
                Transition::Raised
            ),
            (
                AlarmKind::MeterPowerDown,
                "c1".to_string(),
                Transition::Raised
            ),
            (
                AlarmKind::MeterPowerDown,
                "c1".to_string(),
                Transition::Cleared
            ),
        ]
    );
    assert_eq!(got[0].alarm.details["reading_battery_low"], true);
    assert_eq!(got[0].alarm.details["clock_battery_low"], false);
}

#[test]
fn register_memories_written_before_load_and_write_the_same() {
    // As the build holding `RegisterMemory` values in its map wrote them.
    let old = r#"{"active":[],"history":[],"registers":{"m1":{"import":[1795363200000,10.5],"export":null,"import_changed_ms":1795363140000,"export_mark_kwh":null,"export_advanced_ms":null,"cover_open_count":3,"power_down_count":null},"m2":{"import":[1795363200000,0.0],"export":[1795363200000,2.25],"import_changed_ms":null,"export_mark_kwh":2.0,"export_advanced_ms":1795363080000,"cover_open_count":null,"power_down_count":7}}}"#;
    let snap: AlarmSnapshot = serde_json::from_str(old).unwrap();
    let mut e = engine();
    assert!(e.restore(snap, 1_795_363_260_000).is_empty());
    assert_eq!(serde_json::to_string(&e.snapshot()).unwrap(), old);
}
