//! The store writer with its analytics, driven step by step with synthetic bus events and a
//! real store in a temporary directory: loss intervals become records and messages, an alarm
//! survives a restart without being raised twice, a long gap in the heartbeat is reported as
//! a power off, and re-qualified readings get their new flag in the history.

use amr_gateway::analytics::MeterParts;
use amr_gateway::bus::BusEvent;
use amr_gateway::clock::rfc3339_ms;
use amr_gateway::config::{Config, load_str};
use amr_gateway::model::Reading;
use amr_gateway::pipeline::Writer;
use amr_gateway::store::{MetaKey, OutboxRow, RecordKind, Store};
use amr_gateway::uplink::contract::Topics;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

const CONFIG: &str = r#"
[gateway]
id = "gw"
data_dir = "data"

[mqtt]
host = "127.0.0.1"

[[bus]]
name = "rs485-1"
protocol = "modbus-rtu"
device = "/dev/null"

[[meter]]
id = "s"
bus = "rs485-1"
unit = 1
model = "chint-dtsu666"

[[meter]]
id = "c1"
bus = "rs485-1"
unit = 2
model = "eastron-sdm120"

[[meter]]
id = "c2"
bus = "rs485-1"
unit = 3
model = "eastron-sdm120"

[[area]]
id = "T1"
supply = ["s"]
customers = ["c1", "c2"]
loss_interval_s = 60
high_loss_pct = 10
negative_loss_pct = -1

[loss]
grace_s = 20
"#;

/// A minute boundary (2027-01-15T08:00:00Z).
const T0: i64 = 1_800_000_000_000;
/// Reads every 5 s.
const STEP_MS: i64 = 5_000;

fn config() -> Config {
    load_str(CONFIG, Path::new("/site/amr.toml")).expect("test configuration")
}

fn topics() -> Topics {
    Topics::new("amr", "gw")
}

fn reading(meter: &str, ts_ms: i64, kwh: f64) -> BusEvent {
    BusEvent::Reading(Reading {
        meter: meter.into(),
        ts_ms,
        values: BTreeMap::from([
            ("energy_import_kwh".to_string(), kwh),
            ("voltage_l1_v".to_string(), 230.0),
        ]),
    })
}

/// The area at step `k`: the supply meter advances 0.02 kWh per step, the customers
/// `c1_rate` and 0.01; read 1 s after the step's instant.
fn area_reads(k: i64, c1_rate: f64) -> Vec<BusEvent> {
    let ts = T0 + 1_000 + k * STEP_MS;
    vec![
        reading("s", ts, 1000.0 + 0.02 * k as f64),
        reading("c1", ts, 500.0 + c1_rate * k as f64),
        reading("c2", ts, 300.0 + 0.01 * k as f64),
    ]
}

/// One writer step, committed as the gateway commits it.
fn step(writer: &mut Writer, store: &mut Store, events: Vec<BusEvent>, now_ms: i64) {
    let fold = writer.fold(events, now_ms);
    store.commit_at(&fold.batch, now_ms).unwrap();
}

fn outbox(store: &Store) -> Vec<OutboxRow> {
    store.pending(0, 1_000_000).unwrap()
}

fn payload(row: &OutboxRow) -> Value {
    serde_json::from_slice(&row.payload).unwrap()
}

fn open(dir: &Path) -> Store {
    Store::open(&dir.join("amr-gateway.db"), &config().store).unwrap()
}

fn start(store: &mut Store, now_ms: i64) -> (Writer, Vec<String>) {
    let (writer, batch) =
        Writer::start(&config().pipeline_settings(), topics(), store, now_ms).unwrap();
    let topics = batch.messages.iter().map(|m| m.topic.clone()).collect();
    store.commit_at(&batch, now_ms).unwrap();
    (writer, topics)
}

#[test]
fn closed_intervals_become_loss_records_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let (mut writer, _) = start(&mut store, T0);
    // 4 minutes of reads: 5 % loss (customers 0.009 + 0.01 of 0.02 kWh per step).
    for k in 0..48 {
        step(
            &mut writer,
            &mut store,
            area_reads(k, 0.009),
            T0 + 1_500 + k * STEP_MS,
        );
    }
    let records = store
        .records(RecordKind::Loss, Some("T1"), 0, i64::MAX, 100)
        .unwrap();
    assert!(records.len() >= 2, "{records:?}");
    let mut starts = Vec::new();
    for r in &records {
        let b = &r.body;
        assert_eq!(b["area"], "T1");
        assert_eq!(b["complete"], true, "{b}");
        assert!((b["loss_pct"].as_f64().unwrap() - 5.0).abs() < 1e-6, "{b}");
        assert!(
            (b["supply_kwh"].as_f64().unwrap() - 0.24).abs() < 1e-6,
            "{b}"
        );
        assert_eq!(b["coverage_pct"].as_f64(), Some(100.0));
        assert_eq!(
            rfc3339_ms(r.ts_ms),
            b["end"],
            "a record is kept at its interval's end"
        );
        starts.push(b["start"].as_str().unwrap().to_string());
    }
    assert_eq!(starts[0], rfc3339_ms(T0 + 60_000), "first whole interval");
    assert_eq!(starts[1], rfc3339_ms(T0 + 120_000));

    // One loss message per record, sequenced, on the contract's topic.
    let losses: Vec<Value> = outbox(&store)
        .iter()
        .filter(|r| r.topic == "amr/gw/loss/T1")
        .map(payload)
        .collect();
    assert_eq!(losses.len(), records.len());
    assert!(losses.iter().all(|p| p["seq"].as_u64().is_some()));

    // The rolling figure for `status` and the demo.
    let rolling: Value = serde_json::from_str(
        &store
            .meta(&MetaKey::LossRolling("T1".into()))
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert!(
        (rolling["loss_pct"].as_f64().unwrap() - 5.0).abs() < 1e-6,
        "{rolling}"
    );
    assert!(rolling["start"].as_str().unwrap().ends_with('Z'));
    let live = writer.analytics().rolling();
    assert_eq!(live.len(), 1);
    assert!((live[0].loss_pct.unwrap() - 5.0).abs() < 1e-6);

    // No alarm at 5 %; the empty active set was published (retained) at start.
    assert_eq!(writer.analytics().active_alarm_count(), 0);
    assert_eq!(
        store.meta(&MetaKey::ActiveAlarms).unwrap().as_deref(),
        Some("[]")
    );
    assert!(
        outbox(&store)
            .iter()
            .any(|r| r.topic == "amr/gw/alarm/active" && r.retain)
    );
    // Every reading was judged good.
    assert!(
        store
            .history_quality("c1", 0, i64::MAX)
            .unwrap()
            .iter()
            .all(|(_, q)| *q == 0)
    );
}

#[test]
fn an_alarm_active_before_a_restart_is_not_raised_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let (mut writer, _) = start(&mut store, T0);
    // 30 % loss (customers 0.004 + 0.01 of 0.02 kWh): high_loss once the first interval closes.
    let mut k = 0;
    while writer.analytics().active_alarm_count() == 0 {
        step(
            &mut writer,
            &mut store,
            area_reads(k, 0.004),
            T0 + 1_500 + k * STEP_MS,
        );
        k += 1;
        assert!(k < 60, "high_loss not raised within 5 minutes");
    }
    let raised = |store: &Store| -> Vec<Value> {
        outbox(store)
            .iter()
            .filter(|r| r.topic == "amr/gw/alarm/high_loss/T1")
            .map(payload)
            .collect()
    };
    let events = raised(&store);
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e["state"], "raised");
    assert_eq!(e["kind"], "high_loss");
    assert_eq!(e["subject"], "T1");
    assert!((e["value"].as_f64().unwrap() - 30.0).abs() < 1e-6, "{e}");
    assert_eq!(e["threshold"].as_f64(), Some(10.0));
    let active: Value =
        serde_json::from_str(&store.meta(&MetaKey::ActiveAlarms).unwrap().unwrap()).unwrap();
    assert_eq!(active[0]["kind"], "high_loss");
    assert_eq!(active[0]["subject"], "T1");
    let loss_before = store
        .records(RecordKind::Loss, Some("T1"), 0, i64::MAX, 100)
        .unwrap();

    // Restart: a new writer from what the store kept, a few seconds later.
    drop(writer);
    let now = T0 + 1_500 + k * STEP_MS + 3_000;
    let (mut writer, start_topics) = start(&mut store, now);
    assert!(
        !start_topics
            .iter()
            .any(|t| t.starts_with("amr/gw/alarm/high_loss")),
        "{start_topics:?}"
    );
    assert_eq!(writer.analytics().active_alarm_count(), 1);
    let retained = outbox(&store)
        .into_iter()
        .rfind(|r| r.topic == "amr/gw/alarm/active")
        .unwrap();
    assert_eq!(
        payload(&retained)["count"],
        1,
        "the active set, republished"
    );

    // Three more minutes of high loss: still the one raise.
    for j in k..k + 36 {
        step(
            &mut writer,
            &mut store,
            area_reads(j, 0.004),
            T0 + 1_500 + j * STEP_MS + 3_000,
        );
    }
    assert_eq!(raised(&store).len(), 1);
    assert_eq!(writer.analytics().active_alarm_count(), 1);

    // The loss intervals went on after the restart, none twice.
    let loss_after = store
        .records(RecordKind::Loss, Some("T1"), 0, i64::MAX, 100)
        .unwrap();
    assert!(loss_after.len() >= loss_before.len() + 2);
    let mut starts: Vec<&str> = loss_after
        .iter()
        .map(|r| r.body["start"].as_str().unwrap())
        .collect();
    let n = starts.len();
    starts.dedup();
    assert_eq!(starts.len(), n, "an interval was emitted twice");

    // Back in band (5 %) for two intervals: cleared once.
    let from = k + 36;
    for j in from..from + 48 {
        step(
            &mut writer,
            &mut store,
            area_reads_from(j, from),
            T0 + 1_500 + j * STEP_MS + 3_000,
        );
    }
    let events = raised(&store);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1]["state"], "cleared");
    assert_eq!(writer.analytics().active_alarm_count(), 0);
    assert_eq!(
        store.meta(&MetaKey::ActiveAlarms).unwrap().as_deref(),
        Some("[]")
    );
}

/// [`area_reads`] with c1 at 0.004 kWh per step up to step `from`, 0.009 after (5 % loss).
fn area_reads_from(k: i64, from: i64) -> Vec<BusEvent> {
    let ts = T0 + 1_000 + k * STEP_MS + 3_000;
    let c1 = 500.0 + 0.004 * from as f64 + 0.009 * (k - from) as f64;
    vec![
        reading("s", ts, 1000.0 + 0.02 * k as f64),
        reading("c1", ts, c1),
        reading("c2", ts, 300.0 + 0.01 * k as f64),
    ]
}

#[test]
fn a_long_gap_in_the_heartbeat_is_a_power_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let (_, topics) = start(&mut store, T0);
    assert!(
        !topics.iter().any(|t| t.contains("power_off")),
        "first start ever"
    );
    // Ticks without events: the heartbeat is written at least every 10 s.
    let (mut writer, _) = start(&mut store, T0 + 1_000);
    for s in 2..=25 {
        step(&mut writer, &mut store, Vec::new(), T0 + s * 1_000);
    }
    let last_alive: i64 = store
        .meta(&MetaKey::LastAlive)
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    assert!(last_alive >= T0 + 20_000, "heartbeat {last_alive}");
    drop(writer);

    // A quick restart is not a power off.
    let (_, topics) = start(&mut store, last_alive + 30_000);
    assert!(
        !topics.iter().any(|t| t.contains("power_off")),
        "{topics:?}"
    );

    // Down for an hour: one raised and one cleared event, with the span.
    let down_from: i64 = store
        .meta(&MetaKey::LastAlive)
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    let back = down_from + 3_600_000;
    let (writer, _) = start(&mut store, back);
    let events: Vec<Value> = outbox(&store)
        .iter()
        .filter(|r| r.topic == "amr/gw/alarm/power_off/gw")
        .map(payload)
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["state"], "raised");
    assert_eq!(events[1]["state"], "cleared");
    for e in &events {
        assert_eq!(e["kind"], "power_off");
        assert_eq!(e["down_from"], rfc3339_ms(down_from));
        assert_eq!(e["down_to"], rfc3339_ms(back));
        assert_eq!(e["value"].as_f64(), Some(3600.0));
    }
    assert_eq!(events[1]["duration_s"].as_f64(), Some(3600.0));
    assert_eq!(writer.analytics().active_alarm_count(), 0, "never standing");
    // Kept as alarm records for `status`.
    assert_eq!(
        store
            .records(RecordKind::Alarm, Some("gw"), 0, i64::MAX, 10)
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn quality_revisions_land_in_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let (mut writer, _) = start(&mut store, T0);
    let mut c1 = 500.0;
    let mut k = 0;
    let read_c1 = |writer: &mut Writer, store: &mut Store, k: i64, kwh: f64| {
        let ts = T0 + 1_000 + k * STEP_MS;
        step(writer, store, vec![reading("c1", ts, kwh)], ts + 500);
        ts
    };
    while k < 6 {
        read_c1(&mut writer, &mut store, k, c1);
        c1 += 0.01;
        k += 1;
    }
    // The meter is replaced: the new one starts near zero.
    let replaced = read_c1(&mut writer, &mut store, k, 0.02);
    let flag_at = |store: &Store, ts: i64| -> u8 {
        store
            .history_quality("c1", ts, ts + 1)
            .unwrap()
            .first()
            .unwrap()
            .1
    };
    assert_eq!(
        flag_at(&store, replaced),
        4,
        "a drop alone looks like a glitch"
    );
    let next = read_c1(&mut writer, &mut store, k + 1, 0.03);
    assert_eq!(flag_at(&store, replaced), 3, "re-qualified as a reset");
    assert_eq!(flag_at(&store, next), 0);
}

#[test]
fn status_shows_what_the_writer_stored() {
    let dir = tempfile::tempdir().unwrap();
    let config = load_str(CONFIG, &dir.path().join("amr.toml")).unwrap();
    let mut store = Store::open(&config.db_path(), &config.store).unwrap();
    let (mut writer, batch) =
        Writer::start(&config.pipeline_settings(), topics(), &store, T0).unwrap();
    store.commit_at(&batch, T0).unwrap();
    let mut k = 0;
    while writer.analytics().active_alarm_count() == 0 {
        step(
            &mut writer,
            &mut store,
            area_reads(k, 0.004),
            T0 + 1_500 + k * STEP_MS,
        );
        k += 1;
        assert!(k < 60, "high_loss not raised within 5 minutes");
    }
    drop(store);
    let st = amr_gateway::field::status::collect(&config).unwrap();
    let area = &st["areas"][0];
    assert_eq!(area["area"], "T1");
    assert!((area["last_interval"]["loss_pct"].as_f64().unwrap() - 30.0).abs() < 1e-6);
    assert!((area["rolling"]["loss_pct"].as_f64().unwrap() - 30.0).abs() < 1e-6);
    assert_eq!(st["alarms"][0]["kind"], "high_loss");
    assert_eq!(st["alarm_events"][0]["state"], "raised");
    let table = amr_gateway::field::status::table(&st);
    assert!(table.contains("now (rolling):  loss"), "{table}");
    assert!(table.contains("active alarms: 1"), "{table}");
    assert!(table.contains("raised   high_loss"), "{table}");
}

/// The engines' state as JSON, to compare before and after a restart.
fn engines_json(writer: &Writer) -> [Value; 4] {
    let a = writer.analytics();
    [
        serde_json::to_value(a.voltage().snapshot()).unwrap(),
        serde_json::to_value(a.loss().snapshot()).unwrap(),
        serde_json::to_value(a.freeze().snapshot()).unwrap(),
        serde_json::to_value(a.curve().snapshot()).unwrap(),
    ]
}

#[test]
fn snapshots_keep_each_meters_part_apart_and_write_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let (mut writer, _) = start(&mut store, T0);
    for k in 0..8 {
        step(
            &mut writer,
            &mut store,
            area_reads(k, 0.01),
            T0 + 2_000 + k * STEP_MS,
        );
    }

    // Between snapshots (every PARTS_EVERY_MS, or when an engine emits) readings write no
    // part; a stop writes every part.
    let stop = T0 + 2_000 + 8 * STEP_MS;
    let batch = writer.finish(stop);
    store.commit_at(&batch, stop).unwrap();
    let loss_at_stop = engines_json(&writer)[1].clone();

    // Each meter's part under its own key; the engine's own key holds the rest.
    let parts = store.engine_meters(&MetaKey::CurveEngine).unwrap();
    let meters: Vec<&str> = parts.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(meters, ["c1", "c2", "s"]);
    let base: Value =
        serde_json::from_str(&store.meta(&MetaKey::CurveEngine).unwrap().unwrap()).unwrap();
    assert_eq!(base["meters"], serde_json::json!({}), "{base}");
    assert_eq!(store.engine_meters(&MetaKey::LossEngine).unwrap().len(), 3);
    assert_eq!(
        store.engine_meters(&MetaKey::VoltageEngine).unwrap().len(),
        3
    );

    // The next due snapshot writes the part of the one meter that read since, not the
    // others'.
    // (A tick just before lets the engines emit what closed in the meantime: an engine that
    // emits writes its snapshot, and the loss intervals of every meter closed.)
    let now = stop + amr_gateway::pipeline::PARTS_EVERY_MS;
    let before_due = writer.fold([], now - 1_000);
    store.commit_at(&before_due.batch, now - 1_000).unwrap();
    let loss_then = engines_json(&writer)[1].clone();
    let fold = writer.fold([reading("c1", now - 1_000, 500.09)], now);
    let written: Vec<String> = fold
        .batch
        .meta
        .iter()
        .filter_map(|(k, _)| match k {
            MetaKey::EngineMeter(e, _) if **e == MetaKey::LossEngine => None,
            MetaKey::EngineMeter(_, meter) => Some(meter.clone()),
            _ => None,
        })
        .collect();
    assert!(!written.is_empty());
    assert!(written.iter().all(|m| m == "c1"), "{written:?}");
    store.commit_at(&fold.batch, now).unwrap();

    // A restart (no clean stop) continues from the parts joined again, exactly: the engines
    // written at `now` as they were then; the loss engine (which neither emitted nor was due
    // at `now`) with its rest as it wrote it with the intervals it closed a second before, and
    // its meters' parts as written at the stop (those go with an interval hourly) — c1's last
    // reading is a silence to it.
    let before = engines_json(&writer);
    drop(writer);
    let (writer, _) = start(&mut store, now + 1_000);
    let after = engines_json(&writer);
    assert_eq!(after[1]["areas"], loss_then["areas"]);
    assert_eq!(after[1]["latest_ms"], loss_then["latest_ms"]);
    assert_eq!(after[1]["meters"], loss_at_stop["meters"]);
    assert_ne!(before[1], loss_then);
    assert_eq!(
        [&after[0], &after[2], &after[3]],
        [&before[0], &before[2], &before[3]]
    );
}

/// An engine's snapshot rebuilt from its rest and each meter's part as the engine serializes
/// them one at a time (what the writer stores), against the whole snapshot.
fn rebuilt<E: MeterParts>(engine: &E, pointer: &str) -> Value {
    let mut whole = serde_json::to_value(engine.snapshot_rest()).unwrap();
    let container = whole
        .pointer_mut(pointer)
        .expect("an empty container at the pointer");
    for meter in engine.part_meters() {
        let part: Value = serde_json::from_str(&engine.part_json(meter).unwrap()).unwrap();
        match (&mut *container, part) {
            (Value::Object(map), part) => {
                map.insert(meter.to_string(), part);
            }
            (Value::Array(list), Value::Array(items)) => {
                assert!(items.iter().all(|i| i["meter"] == meter), "{items:?}");
                list.extend(items);
            }
            (c, p) => panic!("part {p} does not fit {c}"),
        }
    }
    whole
}

#[test]
fn each_engines_parts_serialized_apart_make_its_whole_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let (mut writer, _) = start(&mut store, T0);
    for k in 0..40 {
        step(
            &mut writer,
            &mut store,
            area_reads(k, 0.01),
            T0 + 2_000 + k * STEP_MS,
        );
    }
    let a = writer.analytics();
    for held in [
        a.loss().part_meters(),
        a.alarms().part_meters(),
        a.freeze().part_meters(),
        a.curve().part_meters(),
        a.voltage().part_meters(),
    ] {
        assert_eq!(held, ["c1", "c2", "s"]);
    }
    assert_eq!(
        rebuilt(a.loss(), "/meters"),
        serde_json::to_value(a.loss().snapshot()).unwrap()
    );
    assert_eq!(
        rebuilt(a.alarms(), "/registers"),
        serde_json::to_value(a.alarms().snapshot()).unwrap()
    );
    assert_eq!(
        rebuilt(a.freeze(), "/meters"),
        serde_json::to_value(a.freeze().snapshot()).unwrap()
    );
    assert_eq!(
        rebuilt(a.curve(), "/meters"),
        serde_json::to_value(a.curve().snapshot()).unwrap()
    );
    assert_eq!(
        rebuilt(a.voltage(), "/series"),
        serde_json::to_value(a.voltage().snapshot()).unwrap()
    );
    assert_eq!(a.voltage().part_json("nobody"), None);
}

#[test]
fn a_curve_block_goes_out_with_its_meters_part_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let (mut writer, _) = start(&mut store, T0);
    // Every meter reads each minute up to 08:44 (the hour's block closes at its 08:45 point).
    let read_all = |k: i64| {
        let ts = T0 + 1_000 + k * 60_000;
        vec![
            reading("s", ts, 1000.0 + 0.2 * k as f64),
            reading("c1", ts, 500.0 + 0.1 * k as f64),
            reading("c2", ts, 300.0 + 0.1 * k as f64),
        ]
    };
    for k in 0..45 {
        step(
            &mut writer,
            &mut store,
            read_all(k),
            T0 + 2_000 + k * 60_000,
        );
    }
    // c1 reads past the point: its block goes out, with its part — not the others' parts,
    // which changed too (their points so far) but whose blocks did not go out.
    let now = T0 + 46 * 60_000 + 2_000;
    let fold = writer.fold([reading("c1", now - 1_000, 504.6)], now);
    let (sent, parts) = curve_in(&fold.batch);
    assert_eq!(sent, ["c1"]);
    assert_eq!(parts, ["c1"]);
    store.commit_at(&fold.batch, now).unwrap();

    // A crash: c1's block is not sent again; the others' go out when they read past the point.
    drop(writer);
    let (mut writer, _) = start(&mut store, now + 1_000);
    let later = now + 60_000;
    let fold = writer.fold(
        [
            reading("c1", later - 1_000, 504.7),
            reading("c2", later - 1_000, 304.7),
        ],
        later,
    );
    let (sent, _) = curve_in(&fold.batch);
    assert!(!sent.contains(&"c1".to_string()), "{sent:?}");
}

#[test]
fn a_crash_with_stale_loss_parts_emits_no_interval_twice_and_bridges_the_silence() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let (mut writer, _) = start(&mut store, T0);
    // A minute of reads, then a clean stop and a start: every meter's loss part is written,
    // holding reads up to 08:00:56.
    for k in 0..12 {
        step(
            &mut writer,
            &mut store,
            area_reads(k, 0.009),
            T0 + 1_500 + k * STEP_MS,
        );
    }
    let stop = T0 + 1_500 + 11 * STEP_MS;
    let batch = writer.finish(stop);
    store.commit_at(&batch, stop).unwrap();
    drop(writer);
    let (mut writer, _) = start(&mut store, stop);

    // Three more minutes: the intervals from 08:01 and 08:02 close, each in a batch with the
    // loss engine's rest but none of its per-meter parts (those are written hourly).
    let loss_part =
        |k: &MetaKey| matches!(k, MetaKey::EngineMeter(e, _) if **e == MetaKey::LossEngine);
    let mut emitted = 0;
    for k in 12..48 {
        let now = T0 + 1_500 + k * STEP_MS;
        let fold = writer.fold(area_reads(k, 0.009), now);
        if fold
            .batch
            .records
            .iter()
            .any(|r| r.kind == RecordKind::Loss)
        {
            emitted += 1;
            assert!(
                fold.batch
                    .meta
                    .iter()
                    .any(|(k, _)| *k == MetaKey::LossEngine)
            );
            assert!(!fold.batch.meta.iter().any(|(k, _)| loss_part(k)));
        }
        store.commit_at(&fold.batch, now).unwrap();
    }
    assert_eq!(emitted, 2);
    let before: Vec<i64> = store
        .records(RecordKind::Loss, Some("T1"), 0, i64::MAX, 100)
        .unwrap()
        .iter()
        .map(|r| r.ts_ms)
        .collect();
    assert_eq!(before, [T0 + 120_000, T0 + 180_000]);

    // A crash at 08:03:56 and a start at 08:05: the engine's rest says 08:03 is next, its
    // meters' reads end at 08:00:56 (the reads since are a silence to it).
    drop(writer);
    let (mut writer, _) = start(&mut store, T0 + 300_000);
    for k in 60..108 {
        step(
            &mut writer,
            &mut store,
            area_reads(k, 0.009),
            T0 + 1_500 + k * STEP_MS,
        );
    }
    let records = store
        .records(RecordKind::Loss, Some("T1"), 0, i64::MAX, 100)
        .unwrap();
    let ends: Vec<i64> = records.iter().map(|r| r.ts_ms).collect();
    let mut unique = ends.clone();
    unique.dedup();
    assert_eq!(ends, unique, "no interval emitted twice: {ends:?}");
    assert_eq!(
        &ends[..4],
        [T0 + 120_000, T0 + 180_000, T0 + 240_000, T0 + 300_000],
        "the next interval after the restart is the one after the last emitted"
    );
    for r in &records {
        let b = &r.body;
        let supply = b["supply_kwh"].as_f64().unwrap();
        // The registers are cumulative: bridged intervals get the energy between the reads
        // either side of the silence, neither negative nor counted twice.
        assert!((supply - 0.24).abs() < 1e-6, "{b}");
        assert!(b["sales_kwh"].as_f64().unwrap() >= 0.0, "{b}");
        if (T0 + 240_000..=T0 + 360_000).contains(&r.ts_ms) {
            // Bracketed only across the silence (longer than max_read_gap_s): estimates.
            assert_eq!(b["complete"], false, "{b}");
            assert_eq!(b["coverage_pct"].as_f64(), Some(0.0), "{b}");
        } else {
            assert_eq!(b["complete"], true, "{b}");
            assert!((b["loss_pct"].as_f64().unwrap() - 5.0).abs() < 1e-6, "{b}");
        }
    }
    assert!(records.len() >= 7, "{ends:?}");
    // The loss messages match the records: one each.
    let losses = outbox(&store)
        .iter()
        .filter(|r| r.topic == "amr/gw/loss/T1")
        .count();
    assert_eq!(losses, records.len());
}

/// An area of `customers` single-phase customers behind supply `s`, curves on.
fn wide_config(customers: usize) -> Config {
    let mut text = String::from(
        "[gateway]\nid = \"gw\"\ndata_dir = \"data\"\n[mqtt]\nhost = \"127.0.0.1\"\n\
         [[bus]]\nname = \"b\"\nprotocol = \"modbus-rtu\"\ndevice = \"/dev/null\"\n\
         [[meter]]\nid = \"s\"\nbus = \"b\"\nunit = 1\nmodel = \"chint-dtsu666\"\n",
    );
    let ids: Vec<String> = (1..=customers).map(|i| format!("c{i:03}")).collect();
    for (i, id) in ids.iter().enumerate() {
        text.push_str(&format!(
            "[[meter]]\nid = \"{id}\"\nbus = \"b\"\nunit = {}\nmodel = \"eastron-sdm120\"\n",
            i + 2
        ));
    }
    let quoted: Vec<String> = ids.iter().map(|id| format!("\"{id}\"")).collect();
    text.push_str(&format!(
        "[[area]]\nid = \"T1\"\nsupply = [\"s\"]\ncustomers = [{}]\n",
        quoted.join(", ")
    ));
    load_str(&text, Path::new("/site/amr.toml")).expect("wide configuration")
}

/// The curve blocks and the curve parts a batch carries, by meter.
fn curve_in(batch: &amr_gateway::store::Batch) -> (Vec<String>, Vec<String>) {
    let sent = batch
        .records
        .iter()
        .filter(|r| r.kind == RecordKind::Curve)
        .map(|r| r.subject.clone())
        .collect();
    let parts = batch
        .meta
        .iter()
        .filter_map(|(k, v)| match k {
            MetaKey::EngineMeter(engine, meter) if **engine == MetaKey::CurveEngine => {
                (v != "null").then(|| meter.clone())
            }
            _ => None,
        })
        .collect();
    (sent, parts)
}

/// When every meter's hour block completes in the same second (Modbus TCP buses read a whole
/// area within a second), at most `CURVE_BLOCKS_PER_TICK` go out a tick and the rest at the
/// next ticks, each with its meter's part; a waiting meter's part is not written before its
/// block (a crash would lose the block); a stop sends every waiting block, and after the
/// restart none goes out again.
#[test]
fn an_areas_curve_blocks_go_out_a_tickful_at_a_time_and_none_is_lost_at_a_stop() {
    use amr_gateway::pipeline::CURVE_BLOCKS_PER_TICK;
    let customers = 2 * CURVE_BLOCKS_PER_TICK + 10;
    let config = wide_config(customers);
    let meters: Vec<String> = config.pipeline_settings().models.keys().cloned().collect();
    let read_all = |k: i64| -> Vec<BusEvent> {
        let ts = T0 + 1_000 + k * 60_000;
        meters
            .iter()
            .enumerate()
            .map(|(i, m)| reading(m, ts, 100.0 + i as f64 + 0.1 * k as f64))
            .collect()
    };
    // Readings every minute to 08:45:01, the second every block completes; `stop_after`:
    // the writer stops after that many ticks, and a new one starts on the same store.
    let run = |stop_after: Option<usize>| -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("amr-gateway.db"), &config.store).unwrap();
        let settings = config.pipeline_settings();
        let (mut writer, batch) = Writer::start(&settings, topics(), &store, T0).unwrap();
        store.commit_at(&batch, T0).unwrap();
        for k in 0..45 {
            step(
                &mut writer,
                &mut store,
                read_all(k),
                T0 + 2_000 + k * 60_000,
            );
        }
        let mut sent_all = Vec::new();
        let mut now = T0 + 45 * 60_000 + 2_000;
        let fold = writer.fold_events(read_all(45));
        store.commit_at(&fold.batch, now).unwrap();
        for tick in 0.. {
            if stop_after == Some(tick) {
                let batch = writer.finish(now);
                let (sent, parts) = curve_in(&batch);
                for m in &sent {
                    assert!(
                        parts.contains(m),
                        "{m}'s part goes with its block at the stop"
                    );
                }
                sent_all.extend(sent);
                store.commit_at(&batch, now).unwrap();
                drop(writer);
                let (restarted, batch) =
                    Writer::start(&settings, topics(), &store, now + 1_000).unwrap();
                store.commit_at(&batch, now + 1_000).unwrap();
                writer = restarted;
                now += 1_000;
                let fold = writer.fold(read_all(46), now + 59_000);
                let (again, _) = curve_in(&fold.batch);
                assert!(again.is_empty(), "sent again after the restart: {again:?}");
                break;
            }
            let batch = writer.tick(now);
            let (sent, parts) = curve_in(&batch);
            store.commit_at(&batch, now).unwrap();
            if sent.is_empty() {
                break;
            }
            assert!(
                sent.len() <= CURVE_BLOCKS_PER_TICK,
                "{} blocks in a tick",
                sent.len()
            );
            for m in &parts {
                assert!(sent.contains(m), "{m}'s part written while its block waits");
            }
            for m in &sent {
                assert!(parts.contains(m), "{m}'s part goes with its block");
            }
            sent_all.extend(sent);
            now += 1_000;
        }
        sent_all
    };
    for stop_after in [None, Some(1)] {
        let mut sent = run(stop_after);
        sent.sort();
        assert_eq!(sent, meters, "every block once ({stop_after:?})");
    }
}

/// The voltage days and months a batch carries (their subjects), and the voltage parts it
/// writes, by meter.
fn voltage_in(batch: &amr_gateway::store::Batch) -> (Vec<String>, Vec<String>, Vec<String>) {
    let of = |kind: RecordKind| -> Vec<String> {
        batch
            .records
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.subject.clone())
            .collect()
    };
    let parts = batch
        .meta
        .iter()
        .filter_map(|(k, _)| match k {
            // A tombstone too: a meter read last before the crash has no open day after
            // its closed ones went.
            MetaKey::EngineMeter(engine, meter) if **engine == MetaKey::VoltageEngine => {
                Some(meter.clone())
            }
            _ => None,
        })
        .collect();
    (
        of(RecordKind::VoltageDay),
        of(RecordKind::VoltageMonth),
        parts,
    )
}

/// When a day (here also a month) ends, the closed voltage days of at most
/// `VOLTAGE_METERS_PER_TICK` meters go out a tick, each with its meter's part and its meter's
/// month; a waiting meter's part is not written before its days; the area's month goes with
/// the last meter's. Across a clean stop or a crash in the middle, every meter's day and
/// month goes out once.
#[test]
fn an_areas_voltage_days_go_out_a_tickful_at_a_time_and_none_twice_across_a_restart() {
    use amr_gateway::pipeline::VOLTAGE_METERS_PER_TICK;
    // 2027-02-01T00:00:00Z: the configuration's days are UTC days.
    const MIDNIGHT: i64 = 1_801_440_000_000;
    // One bus's worth: two ticks' days.
    let customers = VOLTAGE_METERS_PER_TICK + 10;
    let config = wide_config(customers);
    let meters: Vec<String> = config.pipeline_settings().models.keys().cloned().collect();
    let read_all = |ts: i64| -> Vec<BusEvent> {
        meters
            .iter()
            .enumerate()
            .map(|(i, m)| reading(m, ts, 100.0 + i as f64 + ts as f64 / 3.6e9))
            .collect()
    };
    // `start`: minutes before midnight the writer starts (10: no meter's part was written by
    // this run yet, the first tick had no reading; they are not all written with the first
    // meters' days). `stop_after`: after that many ticks of the closing the writer stops
    // (cleanly or not) and a new one starts on the same store.
    let run = |start: i64, stop_after: Option<(usize, bool)>| -> (Vec<String>, Vec<String>) {
        let start = MIDNIGHT - start * 60_000;
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("amr-gateway.db"), &config.store).unwrap();
        let settings = config.pipeline_settings();
        let (mut writer, batch) = Writer::start(&settings, topics(), &store, start).unwrap();
        store.commit_at(&batch, start).unwrap();
        let (mut days_all, mut months_all) = (Vec::new(), Vec::new());
        // Readings every minute to 00:04:01; the days close at 00:05 (`max_gap_s` 300).
        for k in 0..=(MIDNIGHT - start) / 60_000 + 4 {
            let fold = writer.fold(
                read_all(start + 1_000 + k * 60_000),
                start + 2_000 + k * 60_000,
            );
            let (days, months, _) = voltage_in(&fold.batch);
            assert!(
                days.is_empty() && months.is_empty(),
                "no day closes before 00:05"
            );
            store
                .commit_at(&fold.batch, start + 2_000 + k * 60_000)
                .unwrap();
        }
        let mut now = MIDNIGHT + 5 * 60_000 + 3_000;
        let mut area_month_seen = false;
        for tick in 0.. {
            if let Some((at, clean)) = stop_after
                && at == tick
            {
                if clean {
                    let batch = writer.finish(now);
                    let (days, months, _) = voltage_in(&batch);
                    assert!(days.is_empty() && months.is_empty(), "a stop sends no day");
                    store.commit_at(&batch, now).unwrap();
                }
                drop(writer);
                now += 1_000;
                let (restarted, batch) = Writer::start(&settings, topics(), &store, now).unwrap();
                store.commit_at(&batch, now).unwrap();
                writer = restarted;
                now += 1_000;
            }
            let batch = writer.tick(now);
            let (days, months, parts) = voltage_in(&batch);
            store.commit_at(&batch, now).unwrap();
            if days.is_empty() && months.is_empty() {
                break;
            }
            assert!(
                days.len() <= VOLTAGE_METERS_PER_TICK,
                "{} days in a tick",
                days.len()
            );
            for m in &parts {
                assert!(
                    days.contains(m),
                    "{m}'s part written while its days wait (tick {tick}, {stop_after:?})"
                );
            }
            for m in &days {
                assert!(
                    parts.contains(m),
                    "{m}'s part goes with its days (tick {tick}, {stop_after:?})"
                );
            }
            assert!(!area_month_seen, "days after the area's month");
            for m in &months {
                if m == "T1" {
                    area_month_seen = true;
                } else {
                    assert!(days.contains(m), "{m}'s month goes with its last day");
                }
            }
            days_all.extend(days);
            months_all.extend(months);
            now += 1_000;
        }
        assert!(area_month_seen, "the area's month went out");
        (days_all, months_all)
    };
    let mut want_months = meters.clone();
    want_months.push("T1".into());
    want_months.sort();
    // A crash loses what the engines held since they last saved it (README, durability): a
    // meter's day is whole again only when its part was saved within the hour.
    for (start, stop_after) in [
        (75, None),
        (75, Some((1, true))),
        (75, Some((1, false))),
        (10, None),
        (10, Some((1, true))),
    ] {
        let (mut days, mut months) = run(start, stop_after);
        days.sort();
        months.sort();
        assert_eq!(days, meters, "every meter's day once ({stop_after:?})");
        assert_eq!(months, want_months, "every month once ({stop_after:?})");
    }
}
