//! Tests of the freeze engine: meters whose registers follow a known curve (so the truth at
//! midnight is known), read once a minute at their own offsets, in Asia/Shanghai and in
//! Europe/Berlin across a daylight-saving change; time is passed in.

use super::*;
use crate::clock::{parse_rfc3339, rfc3339_ms};

const MIN: i64 = 60_000;

/// A meter's import register: `base + a·h + b·h²` kWh, `h` hours since `t0` (a load that grows
/// through the day, so linear interpolation is not exact by construction).
#[derive(Clone, Copy)]
struct Curve {
    t0: i64,
    base: f64,
    a: f64,
    b: f64,
}

impl Curve {
    fn at(&self, t: i64) -> f64 {
        let h = (t - self.t0) as f64 / HOUR_MS;
        self.base + self.a * h + self.b * h * h
    }
}

fn reading(meter: &str, ts_ms: i64, import: f64) -> Reading {
    Reading {
        meter: meter.into(),
        ts_ms,
        values: [
            ("energy_import_kwh".to_string(), import),
            ("energy_import_t1_kwh".to_string(), import * 0.4),
            ("voltage_l1_v".to_string(), 230.0),
        ]
        .into_iter()
        .collect(),
    }
}

fn settings(zone: &str) -> FreezeSettings {
    FreezeSettings {
        zone: LocalTime::named(zone).unwrap(),
        ..FreezeSettings::default()
    }
}

/// Feeds every meter's reads (one a minute, meter `i` at `7 + 11·i` s into the minute) over
/// `[from, to)`, skipping what `silent` says, with a tick every minute; returns the events.
fn run(
    engine: &mut FreezeEngine,
    meters: &[(&str, Curve)],
    from: i64,
    to: i64,
    silent: impl Fn(&str, i64) -> bool,
) -> Vec<FreezeEvent> {
    let mut out = Vec::new();
    let mut t = from;
    while t < to {
        for (i, (id, c)) in meters.iter().enumerate() {
            let ts = t + 7_000 + 11_000 * i as i64;
            if !silent(id, ts) {
                engine.on_reading(&reading(id, ts, c.at(ts)));
            }
        }
        out.extend(engine.on_tick(t + MIN - 1));
        t += MIN;
    }
    out
}

fn freezes(events: &[FreezeEvent]) -> Vec<&FreezeRecord> {
    events
        .iter()
        .filter_map(|e| match e {
            FreezeEvent::Freeze(f) => Some(f),
            _ => None,
        })
        .collect()
}

fn decisions(events: &[FreezeEvent]) -> Vec<&FreezeDay> {
    events
        .iter()
        .filter_map(|e| match e {
            FreezeEvent::Decided(d) => Some(d),
            _ => None,
        })
        .collect()
}

#[test]
fn shanghai_midnight_is_16_utc_and_the_freeze_matches_the_truth() {
    let t0 = parse_rfc3339("2026-11-30T14:00:00Z").unwrap();
    let c = Curve {
        t0,
        base: 1000.0,
        a: 3.0,
        b: 0.4,
    };
    let mut e = FreezeEngine::new(settings("Asia/Shanghai"), ["m1".to_string()]);
    let events = run(&mut e, &[("m1", c)], t0, t0 + 4 * 60 * MIN, |_, _| false);
    let midnight = parse_rfc3339("2026-11-30T16:00:00Z").unwrap();
    let f = freezes(&events);
    // 1 December: a daily and a monthly freeze, same moment and values.
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!((f[0].kind, f[1].kind), (FreezeKind::Day, FreezeKind::Month));
    for x in &f {
        assert_eq!(x.ts_ms, midnight);
        assert_eq!(x.day, "2026-12-01");
        assert_eq!(x.month, "2026-12");
        assert_eq!(x.source, FreezeSource::Interpolated);
        assert!(!x.late);
        let truth = c.at(midnight);
        let got = x.values["energy_import_kwh"];
        assert!((got - truth).abs() < 1e-4, "{got} vs {truth}");
        assert!((x.values["energy_import_t1_kwh"] - truth * 0.4).abs() < 1e-4);
        assert!(!x.values.contains_key("voltage_l1_v"));
        assert!(x.before_ms.unwrap() < midnight && x.after_ms.unwrap() > midnight);
    }
    // Decided at 01:00 local = 17:00 UTC, once.
    let d = decisions(&events);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].day, "2026-12-01");
    assert_eq!(d[0].frozen, ["m1"]);
    assert!(d[0].missing.is_empty());
    // No freeze at UTC midnight.
    assert!(
        f.iter()
            .all(|x| rfc3339_ms(x.ts_ms).ends_with("T16:00:00.000Z"))
    );
}

#[test]
fn berlin_days_across_the_spring_change_have_23_hours_and_the_daily_loss_its_energy() {
    // 2026-03-29: 02:00 → 03:00. Midnights: 28th 23:00 UTC (CET), 29th 22:00 UTC (CEST).
    let m1 = parse_rfc3339("2026-03-28T23:00:00Z").unwrap();
    let m2 = parse_rfc3339("2026-03-29T22:00:00Z").unwrap();
    let t0 = m1 - 30 * MIN;
    // Supply 10 kW + rising, two customers; the rest is loss.
    let s = Curve {
        t0,
        base: 50_000.0,
        a: 10.0,
        b: 0.02,
    };
    let c1 = Curve {
        t0,
        base: 100.0,
        a: 4.0,
        b: 0.01,
    };
    let c2 = Curve {
        t0,
        base: 200.0,
        a: 5.5,
        b: 0.005,
    };
    let meters = [("S", s), ("c1", c1), ("c2", c2)];
    let mut e = FreezeEngine::new(
        settings("Europe/Berlin"),
        meters.iter().map(|(m, _)| m.to_string()),
    );
    let events = run(&mut e, &meters, t0, m2 + 90 * MIN, |_, _| false);
    let f = freezes(&events);
    let days: Vec<(&str, i64)> = f.iter().map(|x| (x.day.as_str(), x.ts_ms)).collect();
    assert!(days.contains(&("2026-03-29", m1)) && days.contains(&("2026-03-30", m2)));
    assert_eq!(m2 - m1, 23 * 3_600_000);

    let area = AreaSpec {
        id: "t1".into(),
        supply: vec!["S".into()],
        customers: vec!["c1".into(), "c2".into()],
        interval_s: 900,
        high_loss_pct: 10.0,
        negative_loss_pct: -1.0,
        multipliers: BTreeMap::new(),
    };
    let l = e.daily_loss(&area, m2);
    assert_eq!(l.day, "2026-03-29");
    assert_eq!((l.start_ms, l.end_ms), (m1, m2));
    assert!(l.complete && l.missing.is_empty() && l.extrapolated.is_empty());
    assert_eq!(l.coverage_pct, 100.0);
    let truth_supply = s.at(m2) - s.at(m1);
    let truth_sales = c1.at(m2) - c1.at(m1) + c2.at(m2) - c2.at(m1);
    let truth_pct = (truth_supply - truth_sales) / truth_supply * 100.0;
    assert!((l.supply_kwh - truth_supply).abs() < 1e-3, "{l:?}");
    assert!(
        (l.loss_pct.unwrap() - truth_pct).abs() < 1e-3,
        "{l:?} vs {truth_pct}"
    );
    // 23 hours of energy, not 24.
    assert!(
        l.supply_kwh < s.at(m1 + 24 * 3_600_000) - s.at(m1) - 9.0,
        "{l:?}"
    );
}

#[test]
fn a_meter_silent_over_midnight_is_missing_then_frozen_late_when_it_answers() {
    let t0 = parse_rfc3339("2026-11-22T15:00:00Z").unwrap();
    let midnight = parse_rfc3339("2026-11-22T16:00:00Z").unwrap();
    let c = Curve {
        t0,
        base: 10.0,
        a: 2.0,
        b: 0.0,
    };
    let meters = [("m1", c), ("m2", c)];
    let mut e = FreezeEngine::new(
        settings("Asia/Shanghai"),
        meters.iter().map(|(m, _)| m.to_string()),
    );
    // m2 is silent from 23:30 to 03:00 local.
    let silent =
        |id: &str, ts: i64| id == "m2" && ts >= midnight - 30 * MIN && ts < midnight + 3 * 60 * MIN;
    let events = run(&mut e, &meters, t0, midnight + 2 * 60 * MIN, silent);
    let d = decisions(&events);
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].frozen.clone(), d[0].missing.clone()),
        (vec!["m1".to_string()], vec!["m2".to_string()])
    );
    assert_eq!(e.waiting("m2"), [midnight]);
    assert!(freezes(&events).iter().all(|f| f.meter == "m1"));

    let later = run(
        &mut e,
        &meters,
        midnight + 2 * 60 * MIN,
        midnight + 4 * 60 * MIN,
        silent,
    );
    let f = freezes(&later);
    assert_eq!(f.len(), 1, "{f:?}");
    let f = f[0];
    assert_eq!((f.meter.as_str(), f.ts_ms, f.late), ("m2", midnight, true));
    assert_eq!(f.source, FreezeSource::Interpolated);
    assert!((f.values["energy_import_kwh"] - c.at(midnight)).abs() < 1e-6);
    assert!(f.after_ms.unwrap() >= midnight + 3 * 60 * MIN);
    assert!(e.waiting("m2").is_empty());
}

#[test]
fn a_meter_read_just_before_midnight_only_is_extrapolated_and_says_so() {
    let t0 = parse_rfc3339("2026-11-22T15:00:00Z").unwrap();
    let midnight = parse_rfc3339("2026-11-22T16:00:00Z").unwrap();
    let c = Curve {
        t0,
        base: 10.0,
        a: 2.0,
        b: 0.0,
    };
    let mut e = FreezeEngine::new(settings("Asia/Shanghai"), ["m1".to_string()]);
    // Silent from 23:55 until after the decision.
    let events = run(&mut e, &[("m1", c)], t0, midnight + 70 * MIN, |_, ts| {
        ts >= midnight - 5 * MIN
    });
    let f = freezes(&events);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].source, FreezeSource::Extrapolated);
    assert!(f[0].after_ms.is_none() && f[0].before_ms.is_some());
    assert!((f[0].values["energy_import_kwh"] - c.at(midnight)).abs() < 1e-6);
    assert_eq!(decisions(&events)[0].frozen, ["m1"]);

    // A gateway started 5 minutes after midnight: extrapolated backwards from the first reads.
    let mut e = FreezeEngine::new(settings("Asia/Shanghai"), ["m1".to_string()]);
    e.on_tick(midnight - 1);
    let events = run(
        &mut e,
        &[("m1", c)],
        midnight + 5 * MIN,
        midnight + 70 * MIN,
        |_, _| false,
    );
    let f = freezes(&events);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].source, FreezeSource::Extrapolated);
    assert!(f[0].before_ms.is_none() && f[0].after_ms.is_some());
    assert!((f[0].values["energy_import_kwh"] - c.at(midnight)).abs() < 1e-6);
}

#[test]
fn snapshot_and_restore_continue_without_a_second_freeze() {
    let t0 = parse_rfc3339("2026-11-22T15:00:00Z").unwrap();
    let midnight = parse_rfc3339("2026-11-22T16:00:00Z").unwrap();
    let c = Curve {
        t0,
        base: 10.0,
        a: 2.0,
        b: 0.0,
    };
    let mut e = FreezeEngine::new(settings("Asia/Shanghai"), ["m1".to_string()]);
    let before = run(&mut e, &[("m1", c)], t0, midnight + 10 * MIN, |_, _| false);
    assert_eq!(freezes(&before).len(), 1);
    let saved = serde_json::to_string(&e.snapshot()).unwrap();
    let mut e = FreezeEngine::new(settings("Asia/Shanghai"), ["m1".to_string()]);
    e.restore(serde_json::from_str(&saved).unwrap());
    let after = run(
        &mut e,
        &[("m1", c)],
        midnight + 10 * MIN,
        midnight + 70 * MIN,
        |_, _| false,
    );
    assert!(freezes(&after).is_empty());
    assert_eq!(decisions(&after).len(), 1);
    assert_eq!(decisions(&after)[0].frozen, ["m1"]);
}

#[test]
fn a_meters_own_freeze_is_taken_as_is() {
    let midnight = parse_rfc3339("2026-11-22T16:00:00Z").unwrap();
    let mut e = FreezeEngine::new(settings("Asia/Shanghai"), ["m1".to_string()]);
    e.on_tick(midnight - MIN);
    e.on_tick(midnight + MIN);
    e.on_meter_freeze(
        "m1",
        midnight,
        [("energy_import_kwh".to_string(), 42.0)]
            .into_iter()
            .collect(),
    );
    let events = e.on_tick(midnight + 61 * MIN);
    let f = freezes(&events);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].source, FreezeSource::Meter);
    assert_eq!(f[0].values["energy_import_kwh"], 42.0);
    assert_eq!(decisions(&events)[0].frozen, ["m1"]);
}

/// The gateway's wall clock jumps back an hour shortly before midnight and forwards again
/// later: the reads' stamps pass midnight an hour late, and the stamps before it repeat an
/// hour already stamped, while the register keeps advancing. The day is frozen once (a daily and a monthly freeze, one
/// decision), from reads on both sides of its midnight, with a value the register really had
/// around then — never a second freeze, never a negative span.
#[test]
fn a_clock_that_jumps_back_before_midnight_freezes_the_day_once() {
    let h = 60 * MIN;
    let t0 = parse_rfc3339("2026-11-30T22:00:00Z").unwrap();
    let c = Curve {
        t0,
        base: 1000.0,
        a: 3.0,
        b: 0.4,
    };
    // The same register, stamped an hour early.
    let early = Curve { t0: t0 - h, ..c };
    let mut e = FreezeEngine::new(settings("UTC"), ["m1".to_string()]);
    let mut events = run(&mut e, &[("m1", c)], t0, t0 + 100 * MIN, |_, _| false);
    // True 23:40 .. 01:40, stamped 22:40 .. 00:40.
    events.extend(run(
        &mut e,
        &[("m1", early)],
        t0 + 40 * MIN,
        t0 + 160 * MIN,
        |_, _| false,
    ));
    // True time again from 01:40.
    events.extend(run(
        &mut e,
        &[("m1", c)],
        t0 + 220 * MIN,
        t0 + 300 * MIN,
        |_, _| false,
    ));
    let midnight = parse_rfc3339("2026-12-01T00:00:00Z").unwrap();
    let f = freezes(&events);
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!((f[0].kind, f[1].kind), (FreezeKind::Day, FreezeKind::Month));
    for x in &f {
        assert_eq!(x.ts_ms, midnight);
        let v = x.values["energy_import_kwh"];
        assert!(v.is_finite());
        // What the register had when the (late) clock said midnight: true 01:00.
        assert!(
            v >= c.at(midnight - h) && v <= c.at(midnight + h) + 1e-3,
            "{v} outside what the register had around midnight"
        );
        if let (Some(b), Some(a)) = (x.before_ms, x.after_ms) {
            assert!(b <= midnight && midnight <= a, "{x:?}");
        }
    }
    assert_eq!(decisions(&events).len(), 1);
}

/// A meter that keeps its own freezes (one came): the next midnight's interpolation waits for
/// the meter's freeze, read a few minutes after midnight, which is taken as the freeze; a day
/// whose own freeze never comes is interpolated at the decision, as any other meter's.
#[test]
fn a_meter_with_its_own_freezes_waits_for_them_then_falls_back_to_interpolation() {
    let day = 24 * 60 * MIN;
    let m0 = parse_rfc3339("2026-11-22T16:00:00Z").unwrap();
    let c = Curve {
        t0: m0 - day,
        base: 1000.0,
        a: 2.0,
        b: 0.01,
    };
    let mut e = FreezeEngine::new(settings("Asia/Shanghai"), ["m1".to_string()]);
    let own = |v: f64| {
        [("energy_import_kwh".to_string(), v)]
            .into_iter()
            .collect::<BTreeMap<_, _>>()
    };
    let mut events = run(&mut e, &[("m1", c)], m0 - 10 * MIN, m0 + 5 * MIN, |_, _| {
        false
    });
    // The first day: interpolated at once (the engine does not know the meter keeps freezes).
    assert_eq!(freezes(&events)[0].source, FreezeSource::Interpolated);
    e.on_meter_freeze("m1", m0, own(1.0));
    // The second midnight: reads on both sides, then the meter's own freeze at 00:05.
    let m1 = m0 + day;
    events = run(&mut e, &[("m1", c)], m1 - 10 * MIN, m1 + 5 * MIN, |_, _| {
        false
    });
    assert!(freezes(&events).is_empty(), "{events:?}");
    e.on_meter_freeze("m1", m1, own(c.at(m1)));
    events = run(&mut e, &[("m1", c)], m1 + 5 * MIN, m1 + 62 * MIN, |_, _| {
        false
    });
    let f = freezes(&events);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].source, FreezeSource::Meter);
    assert_eq!(f[0].ts_ms, m1);
    assert_eq!(decisions(&events)[0].frozen, ["m1"]);
    // The third midnight: the meter's freeze never comes; interpolated at the decision.
    let m2 = m1 + day;
    events = run(
        &mut e,
        &[("m1", c)],
        m2 - 10 * MIN,
        m2 + 62 * MIN,
        |_, _| false,
    );
    let f = freezes(&events);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].source, FreezeSource::Interpolated);
    assert!((f[0].values["energy_import_kwh"] - c.at(m2)).abs() < 0.01);
    assert_eq!(decisions(&events)[0].frozen, ["m1"]);
}

#[test]
fn a_snapshot_written_with_maps_of_names_still_loads_and_writes_the_same() {
    // As the build holding `BTreeMap<String, f64>` values wrote it: m1 read at 23:58 and
    // 23:59 (Asia/Shanghai), midnight open, the day before frozen.
    let old = r#"{"meters":{"m1":{"prev":{"ts_ms":1795363080000,"values":{"energy_import_kwh":99.8,"energy_import_t1_kwh":39.92}},"last":{"ts_ms":1795363140000,"values":{"energy_import_kwh":99.9,"energy_import_t1_kwh":39.96}},"pending":{"1795363200000":{"before":[{"ts_ms":1795363140000,"values":{"energy_import_kwh":99.9,"energy_import_t1_kwh":39.96}},{"ts_ms":1795363080000,"values":{"energy_import_kwh":99.8,"energy_import_t1_kwh":39.92}}],"after":[],"held":null}},"frozen":{"1795276800000":["interpolated",{"energy_import_kwh":80.0,"energy_import_t1_kwh":32.0}]},"own":false}},"days":{"1795363200000":{"decided":false}},"next_midnight_ms":1795449600000}"#;
    let snap: FreezeSnapshot = serde_json::from_str(old).unwrap();
    assert_eq!(serde_json::to_string(&snap).unwrap(), old);
    let mut e = FreezeEngine::new(settings("Asia/Shanghai"), ["m1".to_string()]);
    e.restore(snap);
    assert_eq!(serde_json::to_string(&e.snapshot()).unwrap(), old);
    let midnight = 1_795_363_200_000;
    e.on_reading(&reading("m1", midnight + MIN, 100.1));
    let events = e.on_tick(midnight + MIN);
    let f = freezes(&events);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].ts_ms, midnight);
    assert_eq!(f[0].source, FreezeSource::Interpolated);
    assert_eq!(f[0].before_ms, Some(midnight - MIN));
    let names: Vec<&String> = f[0].values.keys().collect();
    assert_eq!(names, ["energy_import_kwh", "energy_import_t1_kwh"]);
    assert!((f[0].values["energy_import_kwh"] - 100.0).abs() < 1e-9);
    assert!((f[0].values["energy_import_t1_kwh"] - 40.0).abs() < 1e-9);
}
