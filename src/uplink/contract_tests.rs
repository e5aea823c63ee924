//! The exact bytes of every payload of the contract, pinned: a payload that changes by one
//! byte (field order, number formatting, a null) fails here.

use super::*;
use crate::analytics::alarms::{
    Alarm, AlarmChange, AlarmKind, AlarmState, Severity, SubjectKind, Transition,
};
use crate::analytics::loss::{
    LossRecord, LossVerdict, RollingLoss, Suspect, VerdictKind, VerdictState,
};
use crate::analytics::voltage::DayRecord;
use crate::model::{HealthChange, MeterHealth, MeterStatus, Reading};
use crate::store::MeterState;
use serde_json::json;
use std::time::Duration;

const T: i64 = 1_795_000_000_123;
/// 2026-01-01T00:00:00Z, a multiple of 900 s.
const T0_2026: i64 = 1_767_225_600_000;

fn topics() -> Topics {
    Topics::new("amr", "gw1")
}

fn bytes(v: &serde_json::Value) -> String {
    v.to_string()
}

pub(super) fn loss_record() -> LossRecord {
    LossRecord {
        area: "T1".into(),
        start_ms: T - 900_000,
        end_ms: T,
        supply_kwh: 12.345_678_9,
        sales_kwh: 11.1,
        loss_kwh: 1.245_678_9,
        loss_pct: Some(10.090_1),
        no_loss_pct: None,
        coverage_pct: 100.0,
        energy_coverage_pct: 99.5,
        complete: true,
        missing: vec!["c2".into()],
        per_meter: [("s".to_string(), 12.3), ("c1".to_string(), -0.1 + 0.3)].into(),
        suspects: vec![Suspect {
            meter: "c1".into(),
            score: 4.123_456_78,
            reason: crate::analytics::loss::SuspectReason::BypassSignature,
            detail: "stepped down".into(),
        }],
    }
}

fn alarm(cleared: Option<i64>) -> Alarm {
    Alarm {
        id: "voltage_high/m1.l1".into(),
        kind: AlarmKind::VoltageHigh,
        subject: "m1.l1".into(),
        subject_kind: SubjectKind::Meter,
        severity: Severity::Major,
        state: if cleared.is_some() {
            AlarmState::Cleared
        } else {
            AlarmState::Active
        },
        raised_ms: T - 60_000,
        cleared_ms: cleared,
        value: 250.123_456_7,
        threshold: 235.4,
        details: json!({"meter": "m1", "phase": "l1", "voltage_v": 250.1, "ts": "shadowed"}),
    }
}

#[test]
fn reading_payload_bytes() {
    let r = Reading {
        meter: "m1".into(),
        ts_ms: T,
        values: [
            ("energy_import_kwh".to_string(), 1_234.567_890_12),
            ("voltage_l1_v".to_string(), f64::NAN),
            ("power_kw".to_string(), 0.1 + 0.2),
        ]
        .into(),
    };
    let m = topics().reading_message(&r);
    assert_eq!(m.topic, "amr/gw1/reading/m1");
    assert_eq!((m.qos, m.retain, m.sequenced), (1, false, true));
    assert_eq!(
        bytes(&m.payload),
        r#"{"kind_seq":"reading","meter":"m1","ts":"2026-11-18T11:06:40.123Z","values":{"energy_import_kwh":1234.56789,"power_kw":0.3,"voltage_l1_v":null}}"#
    );
}

#[test]
fn last_will_payload_bytes() {
    let p = String::from_utf8(Topics::last_will_payload()).unwrap();
    assert_eq!(
        p,
        format!(
            r#"{{"last_will":true,"state":"offline","ts":null,"version":"{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn status_payload_bytes() {
    let p = String::from_utf8(Topics::status_payload(true, T)).unwrap();
    assert_eq!(
        p,
        format!(
            r#"{{"state":"online","ts":"2026-11-18T11:06:40.123Z","version":"{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(topics().status(), "amr/gw1/status");
}

#[test]
fn loss_payload_bytes() {
    let m = loss_message(&topics(), &loss_record());
    assert_eq!(m.topic, "amr/gw1/loss/T1");
    assert_eq!((m.qos, m.retain, m.sequenced), (1, false, true));
    assert_eq!(
        bytes(&m.payload),
        r#"{"area":"T1","complete":true,"coverage_pct":100.0,"end":"2026-11-18T11:06:40.123Z","energy_coverage_pct":99.5,"kind_seq":"loss","loss_kwh":1.245679,"loss_pct":10.0901,"meters":{"c1":0.2,"s":12.3},"missing":["c2"],"sales_kwh":11.1,"start":"2026-11-18T10:51:40.123Z","supply_kwh":12.345679,"suspects":[{"detail":"stepped down","meter":"c1","reason":"bypass_signature","score":4.123457}]}"#
    );
    let mut none = loss_record();
    none.loss_pct = None;
    assert_eq!(
        bytes(&loss_message(&topics(), &none).payload),
        r#"{"area":"T1","complete":true,"coverage_pct":100.0,"end":"2026-11-18T11:06:40.123Z","energy_coverage_pct":99.5,"kind_seq":"loss","loss_kwh":1.245679,"loss_pct":null,"meters":{"c1":0.2,"s":12.3},"missing":["c2"],"sales_kwh":11.1,"start":"2026-11-18T10:51:40.123Z","supply_kwh":12.345679,"suspects":[{"detail":"stepped down","meter":"c1","reason":"bypass_signature","score":4.123457}]}"#
    );
}

#[test]
fn rolling_loss_and_verdict_details_bytes() {
    let r = RollingLoss {
        area: "T1".into(),
        start_ms: T - 300_000,
        end_ms: T,
        supply_kwh: 1.000_000_4,
        sales_kwh: 0.9,
        loss_kwh: 0.100_000_4,
        loss_pct: None,
        coverage_pct: 50.0,
    };
    assert_eq!(
        bytes(&rolling_loss_body(&r)),
        r#"{"area":"T1","coverage_pct":50.0,"end":"2026-11-18T11:06:40.123Z","loss_kwh":0.1,"loss_pct":null,"sales_kwh":0.9,"start":"2026-11-18T11:01:40.123Z","supply_kwh":1.0}"#
    );
    let v = LossVerdict {
        kind: VerdictKind::HighLoss,
        state: VerdictState::Raised,
        area: "T1".into(),
        value: 12.345_678_91,
        threshold: 10.0,
        start_ms: T - 900_000,
        end_ms: T,
        supply_kwh: 10.0,
        sales_kwh: 8.765_432_1,
        loss_kwh: 1.234_567_9,
    };
    assert_eq!(
        bytes(&loss_verdict_details(&v)),
        r#"{"area":"T1","end":"2026-11-18T11:06:40.123Z","loss_kwh":1.234568,"loss_pct":12.345679,"sales_kwh":8.765432,"start":"2026-11-18T10:51:40.123Z","supply_kwh":10.0}"#
    );
}

#[test]
fn alarm_payload_bytes() {
    let raised = AlarmChange {
        alarm: alarm(None),
        transition: Transition::Raised,
        ts_ms: T,
    };
    let m = alarm_message(&topics(), &raised);
    assert_eq!(m.topic, "amr/gw1/alarm/voltage_high/m1.l1");
    assert_eq!((m.qos, m.retain, m.sequenced), (1, false, true));
    assert_eq!(
        bytes(&m.payload),
        r#"{"cleared":null,"erc":24,"id":"voltage_high/m1.l1","kind":"voltage_high","kind_seq":"alarm","meter":"m1","phase":"l1","raised":"2026-11-18T11:05:40.123Z","severity":"major","state":"raised","subject":"m1.l1","subject_kind":"meter","threshold":235.4,"ts":"2026-11-18T11:06:40.123Z","value":250.123457,"voltage_v":250.1}"#
    );
    let cleared = AlarmChange {
        alarm: alarm(Some(T - 1_500)),
        transition: Transition::Cleared,
        ts_ms: T,
    };
    assert_eq!(
        bytes(&alarm_message(&topics(), &cleared).payload),
        r#"{"cleared":"2026-11-18T11:06:38.623Z","duration_s":58.5,"erc":24,"id":"voltage_high/m1.l1","kind":"voltage_high","kind_seq":"alarm","meter":"m1","phase":"l1","raised":"2026-11-18T11:05:40.123Z","severity":"major","state":"cleared","subject":"m1.l1","subject_kind":"meter","threshold":235.4,"ts":"2026-11-18T11:06:40.123Z","value":250.123457,"voltage_v":250.1}"#
    );
}

#[test]
fn active_alarms_payload_bytes() {
    let mut other = alarm(None);
    other.id = "meter_offline/a".into();
    other.kind = AlarmKind::MeterOffline;
    other.subject = "a".into();
    other.details = json!({"bus": "b"});
    let m = active_alarms_message(&topics(), &[alarm(None), other], T);
    assert_eq!(m.topic, "amr/gw1/alarm/active");
    assert_eq!((m.qos, m.retain, m.sequenced), (1, true, false));
    assert_eq!(
        bytes(&m.payload),
        r#"{"alarms":[{"bus":"b","erc":31,"id":"meter_offline/a","kind":"meter_offline","raised":"2026-11-18T11:05:40.123Z","severity":"major","subject":"a","subject_kind":"meter","threshold":235.4,"value":250.123457},{"erc":24,"id":"voltage_high/m1.l1","kind":"voltage_high","meter":"m1","phase":"l1","raised":"2026-11-18T11:05:40.123Z","severity":"major","subject":"m1.l1","subject_kind":"meter","threshold":235.4,"value":250.123457,"voltage_v":250.1}],"count":2,"ts":"2026-11-18T11:06:40.123Z"}"#
    );
    assert_eq!(
        bytes(&active_alarms_message(&topics(), &[], T).payload),
        r#"{"alarms":[],"count":0,"ts":"2026-11-18T11:06:40.123Z"}"#
    );
}

#[test]
fn voltage_day_payload_bytes() {
    let d = DayRecord {
        meter: "m1".into(),
        phase: "l1".into(),
        day_start_ms: 1_794_960_000_000,
        day_end_ms: 1_794_960_000_000 + 86_400_000,
        day: "2026-11-18".into(),
        monitored_s: 86_000.0,
        above_s: 60.5,
        below_s: 0.0,
        outage_s: 400.0,
        qualified_pct: Some(99.929_651_16),
        min_v: Some(201.3),
        max_v: None,
        reads: 1440,
        upper_v: 235.4,
        lower_v: 198.0,
        closed: true,
    };
    let m = voltage_day_message(&topics(), &d);
    assert_eq!(m.topic, "amr/gw1/voltage/m1");
    assert_eq!((m.qos, m.retain, m.sequenced), (1, false, true));
    assert_eq!(
        bytes(&m.payload),
        r#"{"above_s":60.5,"below_s":0.0,"day":"2026-11-18","end":"2026-11-19T00:00:00.000Z","kind_seq":"voltage_day","lower_v":198.0,"max_v":null,"meter":"m1","min_v":201.3,"monitored_s":86000.0,"outage_s":400.0,"phase":"l1","qualified_pct":99.929651,"reads":1440,"start":"2026-11-18T00:00:00.000Z","upper_v":235.4}"#
    );
}

/// A meter's health before its first poll ended.
fn unpolled() -> MeterHealth {
    MeterHealth {
        online: None,
        consecutive_failures: 0,
        polls: 0,
        successes: 0,
        timeouts: 0,
        crc_errors: 0,
        wrong_unit: 0,
        exceptions: 0,
        latency_ms: None,
        last_ok_ms: None,
        last_error: None,
        probe_interval: Duration::from_secs(5),
    }
}

#[test]
fn meter_state_payload_bytes() {
    let s = MeterStatus {
        meter: "m1".into(),
        bus: "rs485".into(),
        unit: Some(7),
        address: None,
        items: None,
        health: MeterHealth {
            online: Some(true),
            polls: 3,
            successes: 2,
            timeouts: 1,
            latency_ms: Some(41.6),
            last_ok_ms: Some(T - 1000),
            last_error: Some("timeout".into()),
            ..unpolled()
        },
        change: HealthChange::WentOnline,
        ts_ms: T,
    };
    let ratios = Some(crate::model::Ratios { ct: 60.0, pt: 1.0 });
    let m = meter_state_message(
        &topics(),
        &MeterState::of(&s, Some("chint-dtsu666")),
        ratios,
    );
    assert_eq!(m.topic, "amr/gw1/meter/m1/state");
    assert_eq!((m.qos, m.retain, m.sequenced), (1, true, false));
    assert_eq!(
        bytes(&m.payload),
        r#"{"bus":"rs485","consecutive_failures":0,"crc_errors":0,"ct_ratio":60.0,"exceptions":0,"last_error":"timeout","last_ok":"2026-11-18T11:06:39.123Z","latency_ms":42.0,"meter":"m1","model":"chint-dtsu666","multiplier":60.0,"polls":3,"pt_ratio":1.0,"state":"online","success_rate_pct":66.7,"timeouts":1,"ts":"2026-11-18T11:06:40.123Z","unit":7,"wrong_unit":0}"#
    );
    let mut fresh = s.clone();
    fresh.unit = None;
    fresh.health = unpolled();
    assert_eq!(
        bytes(&meter_state_message(&topics(), &MeterState::of(&fresh, None), None).payload),
        r#"{"bus":"rs485","consecutive_failures":0,"crc_errors":0,"ct_ratio":null,"exceptions":0,"last_error":null,"last_ok":null,"latency_ms":null,"meter":"m1","model":null,"multiplier":null,"polls":0,"pt_ratio":null,"state":"unknown","success_rate_pct":0.0,"timeouts":0,"ts":"2026-11-18T11:06:40.123Z","unit":null,"wrong_unit":0}"#
    );
}

#[test]
fn loss_message_has_the_contract_fields() {
    let rec = LossRecord {
        area: "t1".into(),
        start_ms: T0_2026,
        end_ms: T0_2026 + 900_000,
        supply_kwh: 15.0,
        sales_kwh: 14.4,
        loss_kwh: 0.6,
        loss_pct: Some(4.0),
        no_loss_pct: None,
        coverage_pct: 100.0,
        energy_coverage_pct: 100.0,
        complete: true,
        missing: vec![],
        per_meter: [("S".to_string(), 15.0), ("c00".to_string(), 14.4)].into(),
        suspects: vec![Suspect {
            meter: "c00".into(),
            score: 7.25,
            reason: crate::analytics::loss::SuspectReason::BypassSignature,
            detail: "x".into(),
        }],
    };
    let m = loss_message(&Topics::new("amr", "gw"), &rec);
    assert_eq!(m.topic, "amr/gw/loss/t1");
    assert_eq!((m.qos, m.retain, m.sequenced), (1, false, true));
    let p = &m.payload;
    assert_eq!(p["start"], "2026-01-01T00:00:00.000Z");
    assert_eq!(p["end"], "2026-01-01T00:15:00.000Z");
    for key in [
        "area",
        "supply_kwh",
        "sales_kwh",
        "loss_kwh",
        "loss_pct",
        "coverage_pct",
        "complete",
        "energy_coverage_pct",
        "missing",
        "suspects",
        "meters",
    ] {
        assert!(p.get(key).is_some(), "{key}");
    }
    assert_eq!(p["suspects"][0]["reason"], "bypass_signature");
    assert_eq!(p["meters"]["c00"], 14.4);
    let none = LossRecord {
        loss_pct: None,
        ..rec
    };
    assert!(loss_message(&Topics::new("amr", "gw"), &none).payload["loss_pct"].is_null());
}

#[test]
fn freeze_payload_bytes() {
    use crate::analytics::freeze::{FreezeKind, FreezeRecord, FreezeSource};
    // 2026-12-01 00:00 in Asia/Shanghai.
    let f = FreezeRecord {
        meter: "m1".into(),
        kind: FreezeKind::Month,
        ts_ms: 1_796_054_400_000,
        day: "2026-12-01".into(),
        month: "2026-12".into(),
        values: [
            ("energy_import_kwh".to_string(), 1234.5678),
            ("energy_export_kwh".to_string(), 0.0),
        ]
        .into_iter()
        .collect(),
        source: FreezeSource::Interpolated,
        before_ms: Some(1_796_054_390_000),
        after_ms: None,
        late: false,
    };
    let m = freeze_message(&topics(), &f);
    assert_eq!(m.topic, "amr/gw1/freeze/m1");
    assert_eq!((m.qos, m.retain, m.sequenced), (1, false, true));
    assert_eq!(
        bytes(&m.payload),
        r#"{"after":null,"before":"2026-11-30T15:59:50.000Z","day":"2026-12-01","kind":"month","kind_seq":"freeze","late":false,"meter":"m1","month":"2026-12","source":"interpolated","ts":"2026-11-30T16:00:00.000Z","values":{"energy_export_kwh":0.0,"energy_import_kwh":1234.5678}}"#
    );
}

#[test]
fn curve_payload_bytes() {
    use crate::analytics::curve::{CurveBlock, CurvePoint};
    // 2026-11-23 00:00..01:00 in Asia/Shanghai, one point taken.
    let b = CurveBlock {
        meter: "m1".into(),
        start_ms: 1_795_363_200_000,
        end_ms: 1_795_366_800_000,
        day: "2026-11-23".into(),
        interval_min: 15,
        points: vec![CurvePoint {
            ts_ms: 1_795_364_100_000,
            energy: [("energy_import_kwh".to_string(), 10.25)]
                .into_iter()
                .collect(),
            instant: [
                ("power_kw".to_string(), 1.5),
                ("voltage_l1_v".to_string(), 229.96),
            ]
            .into_iter()
            .collect(),
            instant_ts_ms: 1_795_364_105_000,
        }],
    };
    let m = curve_message(&topics(), &b);
    assert_eq!(m.topic, "amr/gw1/curve/m1");
    assert_eq!((m.qos, m.retain, m.sequenced), (1, false, true));
    assert_eq!(
        bytes(&m.payload),
        r#"{"day":"2026-11-23","end":"2026-11-22T17:00:00.000Z","interval_min":15,"kind_seq":"curve","meter":"m1","points":[{"energy":{"energy_import_kwh":10.25},"instant":{"power_kw":1.5,"voltage_l1_v":229.96},"instant_ts":"2026-11-22T16:15:05.000Z","ts":"2026-11-22T16:15:00.000Z"}],"start":"2026-11-22T16:00:00.000Z"}"#
    );
}

#[test]
fn collection_and_daily_loss_payload_bytes() {
    use crate::analytics::collection::{CollectionReport, GroupKind, GroupSuccess};
    use crate::analytics::freeze::DailyLoss;
    let r = CollectionReport {
        day: "2026-11-24".into(),
        ts_ms: 1_795_449_600_000,
        configured: 3,
        frozen: 2,
        rate_pct: 200.0 / 3.0,
        failed: vec!["b2".into()],
        groups: vec![
            GroupSuccess {
                kind: GroupKind::Bus,
                id: "rs485-1".into(),
                configured: 3,
                frozen: 2,
                rate_pct: 200.0 / 3.0,
                failed: vec!["b2".into()],
            },
            GroupSuccess {
                kind: GroupKind::Area,
                id: "t1".into(),
                configured: 2,
                frozen: 2,
                rate_pct: 100.0,
                failed: vec![],
            },
        ],
    };
    let m = collection_message(&topics(), &r);
    assert_eq!(m.topic, "amr/gw1/collection");
    assert_eq!((m.qos, m.retain, m.sequenced), (1, false, true));
    assert_eq!(
        bytes(&m.payload),
        r#"{"areas":[{"area":"t1","configured":2,"failed":[],"frozen":2,"rate_pct":100.0}],"buses":[{"bus":"rs485-1","configured":3,"failed":["b2"],"frozen":2,"rate_pct":66.666667}],"configured":3,"day":"2026-11-24","failed":["b2"],"frozen":2,"kind_seq":"collection","rate_pct":66.666667,"ts":"2026-11-23T16:00:00.000Z"}"#
    );

    let l = DailyLoss {
        area: "t1".into(),
        day: "2026-11-24".into(),
        start_ms: 1_795_449_600_000,
        end_ms: 1_795_449_600_000 + 86_400_000,
        supply_kwh: 250.0,
        sales_kwh: 240.0,
        loss_kwh: 10.0,
        loss_pct: Some(4.0),
        coverage_pct: 100.0,
        complete: true,
        missing: vec![],
        extrapolated: vec!["c2".into()],
    };
    let m = daily_loss_message(&topics(), &l);
    assert_eq!(m.topic, "amr/gw1/loss/t1/day");
    assert_eq!((m.qos, m.retain, m.sequenced), (1, false, true));
    assert_eq!(
        bytes(&m.payload),
        r#"{"area":"t1","complete":true,"coverage_pct":100.0,"day":"2026-11-24","end":"2026-11-24T16:00:00.000Z","extrapolated":["c2"],"kind_seq":"loss_day","loss_kwh":10.0,"loss_pct":4.0,"missing":[],"sales_kwh":240.0,"start":"2026-11-23T16:00:00.000Z","supply_kwh":250.0}"#
    );
}

#[test]
fn voltage_month_payload_bytes() {
    use crate::analytics::voltage::{AreaMonth, MonthRecord};
    let m = MonthRecord {
        meter: "m1".into(),
        phase: "l1".into(),
        month: "2026-02".into(),
        start_ms: 1_769_875_200_000,
        end_ms: 1_772_294_400_000,
        monitored_s: 2_419_200.0,
        above_s: 7200.0,
        below_s: 0.0,
        outage_s: 0.0,
        qualified_pct: Some(99.702_381),
        min_v: Some(230.0),
        max_v: Some(240.0),
        days: 28,
        upper_v: 235.4,
        lower_v: 198.0,
    };
    let msg = voltage_month_message(&topics(), &m);
    assert_eq!(msg.topic, "amr/gw1/voltage/m1/month");
    assert_eq!((msg.qos, msg.retain, msg.sequenced), (1, false, true));
    assert_eq!(
        bytes(&msg.payload),
        r#"{"above_s":7200.0,"below_s":0.0,"days":28,"end":"2026-02-28T16:00:00.000Z","kind_seq":"voltage_month","lower_v":198.0,"max_v":240.0,"meter":"m1","min_v":230.0,"monitored_s":2419200.0,"month":"2026-02","outage_s":0.0,"phase":"l1","qualified_pct":99.702381,"start":"2026-01-31T16:00:00.000Z","upper_v":235.4}"#
    );
    let a = AreaMonth {
        area: "T1".into(),
        month: "2026-02".into(),
        start_ms: 1_769_875_200_000,
        end_ms: 1_772_294_400_000,
        monitored_s: 4_838_400.0,
        above_s: 7200.0,
        below_s: 0.0,
        qualified_pct: None,
        meters: 2,
    };
    let msg = area_voltage_month_message(&topics(), &a);
    assert_eq!(msg.topic, "amr/gw1/voltage/area/T1/month");
    assert_eq!(
        bytes(&msg.payload),
        r#"{"above_s":7200.0,"area":"T1","below_s":0.0,"end":"2026-02-28T16:00:00.000Z","kind_seq":"voltage_area_month","meters":2,"monitored_s":4838400.0,"month":"2026-02","qualified_pct":null,"start":"2026-01-31T16:00:00.000Z"}"#
    );
}

#[test]
fn command_result_payloads_byte_for_byte() {
    let t = Topics::new("amr", "gw");
    let done = command_result_message(
        &t,
        &CommandResult {
            id: Some("c-1".into()),
            name: Some("ping".into()),
            state: "done",
            reason: None,
            data: Some(json!({"pong": true})),
            ts_ms: 0,
        },
    );
    assert_eq!(done.topic, "amr/gw/command/result");
    assert_eq!((done.qos, done.retain, done.sequenced), (1, false, true));
    assert_eq!(
        done.payload.to_string(),
        r#"{"data":{"pong":true},"id":"c-1","kind_seq":"command_result","name":"ping","state":"done","ts":"1970-01-01T00:00:00.000Z"}"#
    );
    let rejected = command_result_message(
        &t,
        &CommandResult {
            id: None,
            name: None,
            state: "rejected",
            reason: Some("bad signature for key `k`".into()),
            data: None,
            ts_ms: 0,
        },
    );
    assert_eq!(
        rejected.payload.to_string(),
        r#"{"id":null,"kind_seq":"command_result","name":null,"reason":"bad signature for key `k`","state":"rejected","ts":"1970-01-01T00:00:00.000Z"}"#
    );
    assert_eq!(t.command(), "amr/gw/command");
    let again = recalled_message("amr/gw/reading/m1", r#"{"seq":7,"meter":"m1"}"#).unwrap();
    assert_eq!(
        (again.sequenced, again.payload["seq"].as_u64()),
        (false, Some(7))
    );
}

#[test]
fn health_payload_bytes() {
    let t = Topics::new("amr", "gw");
    assert_eq!(t.health(), "amr/gw/health");
    let h = HealthReport {
        ts_ms: 0,
        uptime_s: 3600,
        start_reason: StartReason::AfterPowerLoss,
        interval_s: 60,
        cpu_pct: Some(1.234_567_89),
        rss_bytes: Some(12_345_678),
        disk_free_bytes: Some(1_000_000),
        disk_free_min_bytes: Some(900_000),
        disk_total_bytes: Some(8_000_000),
        store_bytes: Some(65_536),
        backlog: 3,
        backlog_oldest_age_s: Some(42),
        buses: vec![BusHealth {
            name: "rs485-1".into(),
            cycle_s: Some(15.5),
            success_pct: Some(97.5),
            polls: 40,
            meters_online: 9,
            meters_total: 10,
        }],
        clock: ClockHealth {
            synchronized: true,
            source: "timesyncd",
            sane: true,
        },
        commands_rejected: [("bad_signature".to_string(), 2)].into(),
        readings_dropped: 0,
        alarms_active: 1,
    };
    assert_eq!(
        String::from_utf8(health_payload(&h)).unwrap(),
        format!(
            r#"{{"alarms_active":1,"backlog":{{"count":3,"oldest_age_s":42}},"buses":{{"rs485-1":{{"cycle_s":15.5,"meters_online":9,"meters_total":10,"polls":40,"success_pct":97.5}}}},"clock":{{"sane":true,"source":"timesyncd","synchronized":true}},"commands_rejected":{{"bad_signature":2,"total":2}},"cpu_pct":1.234568,"disk":{{"free_bytes":1000000,"free_min_bytes":900000,"total_bytes":8000000}},"interval_s":60,"readings_dropped":0,"rss_bytes":12345678,"start_reason":"after_power_loss","store_bytes":65536,"ts":"1970-01-01T00:00:00.000Z","uptime_s":3600,"version":"{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )
    );
    let mut m = t.reading_message(&Reading {
        meter: "m1".into(),
        ts_ms: 0,
        values: [("power_kw".to_string(), 1.5)].into(),
    });
    mark_clock_unsynchronized(&mut m);
    assert_eq!(
        m.payload.to_string(),
        r#"{"clock":"unsynchronized","kind_seq":"reading","meter":"m1","ts":"1970-01-01T00:00:00.000Z","values":{"power_kw":1.5}}"#
    );
}
