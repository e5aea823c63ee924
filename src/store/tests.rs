//! Unit tests of the store: seq allocation, atomic batches, a full disk, pruning.

use super::*;
use serde_json::json;

fn cfg() -> StoreSettings {
    StoreSettings {
        history_days: 35,
        max_size_mb: 1024,
        commit_window_ms: 0,
    }
}

fn reading(meter: &str, ts_ms: i64, kwh: f64) -> Reading {
    Reading {
        meter: meter.into(),
        ts_ms,
        values: [("energy_import_kwh".to_string(), kwh)].into(),
    }
}

fn message(n: i64) -> Message {
    Message {
        topic: format!("amr/gw/reading/m{n}"),
        payload: json!({"meter": format!("m{n}"), "n": n}).into(),
        qos: 1,
        retain: false,
        sequenced: true,
    }
}

fn seqs(store: &Store) -> Vec<u64> {
    store
        .pending(0, usize::MAX)
        .unwrap()
        .iter()
        .filter_map(|row| {
            let v: serde_json::Value = serde_json::from_slice(&row.payload).unwrap();
            v.get("seq").and_then(|s| s.as_u64())
        })
        .collect()
}

#[test]
fn seq_continues_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/amr.db");
    {
        let mut store = Store::open(&path, &cfg()).unwrap();
        assert_eq!(store.schema_version().unwrap(), newest_schema());
        let batch = Batch {
            readings: vec![reading("m1", 1_000, 1.5)],
            messages: vec![message(1), message(2)],
            ..Default::default()
        };
        let report = store.commit(&batch).unwrap();
        assert_eq!(report.seq_range, Some((1, 2)));
        assert_eq!(report.readings, 1);
        assert_eq!(report.outbox_ids.len(), 2);
        // A retained, unsequenced message takes no seq.
        let retained = Message {
            topic: "amr/gw/meter/m1/state".into(),
            payload: json!({"state": "online"}).into(),
            qos: 1,
            retain: true,
            sequenced: false,
        };
        let report = store
            .commit(&Batch {
                readings: vec![],
                messages: vec![retained],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(report.seq_range, None);
    }
    let mut store = Store::open(&path, &cfg()).unwrap();
    assert_eq!(store.last_seq().unwrap(), 2);
    let ids: Vec<i64> = store.pending(0, 10).unwrap().iter().map(|r| r.id).collect();
    store.ack(&ids).unwrap();
    let report = store
        .commit(&Batch {
            readings: vec![],
            messages: vec![message(3)],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(report.seq_range, Some((3, 3)));
    assert_eq!(seqs(&store), vec![3]);
    // Outbox ids never go back either (AUTOINCREMENT), even after the outbox was emptied.
    assert!(report.outbox_ids[0] > *ids.iter().max().unwrap());
}

#[test]
fn a_failing_batch_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("amr.db"), &cfg()).unwrap();
    store
        .commit(&Batch {
            readings: vec![reading("m1", 1, 1.0)],
            messages: vec![message(1)],
            ..Default::default()
        })
        .unwrap();
    let mut bad = message(3);
    bad.payload = json!([1, 2, 3]).into(); // a sequenced payload must be an object
    let err = store
        .commit(&Batch {
            readings: vec![reading("m1", 2, 2.0), reading("m2", 2, 2.0)],
            messages: vec![message(2), bad],
            ..Default::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("amr.db"), "{err}");
    assert_eq!(store.history("m1", 0, 100).unwrap().len(), 1);
    assert_eq!(store.latest_reading("m2").unwrap(), None);
    assert_eq!(seqs(&store), vec![1]);
    assert_eq!(store.last_seq().unwrap(), 1);
}

#[test]
fn a_full_disk_is_an_error_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("amr.db");
    let mut store = Store::open(&path, &cfg()).unwrap();
    store
        .commit(&Batch {
            readings: vec![],
            messages: vec![message(1)],
            ..Default::default()
        })
        .unwrap();
    // Cap the file at its current size: the next big batch hits SQLITE_FULL.
    let pages: i64 = store
        .connection()
        .pragma_query_value(None, "page_count", |r| r.get(0))
        .unwrap();
    store
        .connection()
        .pragma_update(None, "max_page_count", pages)
        .unwrap();
    let big = Batch {
        readings: (0..2000).map(|i| reading("m1", i, i as f64)).collect(),
        messages: (0..2000).map(message).collect(),
        ..Default::default()
    };
    let err = store.commit(&big).unwrap_err();
    assert!(err.is_full(), "{err:?}");
    assert!(err.to_string().contains("disk full"), "{err}");
    assert!(err.to_string().contains("amr.db"), "{err}");
    assert_eq!(seqs(&store), vec![1]);
    assert_eq!(store.last_seq().unwrap(), 1);
    assert_eq!(store.history("m1", i64::MIN, i64::MAX).unwrap().len(), 0);
    // Once there is room again, the store carries on.
    store
        .connection()
        .pragma_update(None, "max_page_count", 1_000_000)
        .unwrap();
    assert_eq!(store.commit(&big).unwrap().seq_range, Some((2, 2001)));
    assert_eq!(store.integrity_check().unwrap(), "ok");
}

#[test]
fn history_and_latest_reading() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("amr.db"), &cfg()).unwrap();
    let mut batch = Batch::default();
    for ts in [3_000, 1_000, 2_000] {
        batch.readings.push(reading("m1", ts, ts as f64 / 1000.0));
    }
    batch.readings.push(reading("m2", 5_000, f64::NAN));
    store.commit(&batch).unwrap();
    let h = store.history("m1", 1_000, 3_000).unwrap();
    assert_eq!(
        h.iter().map(|r| r.ts_ms).collect::<Vec<_>>(),
        vec![1_000, 2_000]
    );
    assert_eq!(store.latest_reading("m1").unwrap().unwrap().ts_ms, 3_000);
    let m2 = store.latest_reading("m2").unwrap().unwrap();
    assert!(m2.values["energy_import_kwh"].is_nan());
}

#[test]
fn backlog_meta_and_meter_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("amr.db"), &cfg()).unwrap();
    assert_eq!(store.backlog().unwrap(), (0, None));
    let batch = Batch {
        readings: vec![],
        messages: vec![message(1), message(2)],
        ..Default::default()
    };
    store.commit_at(&batch, 1_000).unwrap();
    store.commit_at(&batch, 2_000).unwrap();
    assert_eq!(store.backlog().unwrap(), (4, Some(1_000)));
    let first = store.pending(0, 2).unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(store.pending(first[1].id, 10).unwrap().len(), 2);
    assert_eq!(store.ack(&[first[0].id, first[1].id, 999]).unwrap(), 2);
    assert_eq!(store.backlog().unwrap(), (2, Some(2_000)));

    let key = MetaKey::LossRolling("T1".into());
    store.set_meta(&key, "x").unwrap();
    assert_eq!(store.meta(&key).unwrap().as_deref(), Some("x"));
    let mut state = meter_state("m1");
    state.online = Some(true);
    store.put_meter_state(&state, 5).unwrap();
    state.online = Some(false);
    store.put_meter_state(&state, 6).unwrap();
    assert_eq!(store.meter_states().unwrap()["m1"], state);
}

fn meter_state(meter: &str) -> MeterState {
    MeterState {
        meter: meter.into(),
        bus: "rs485".into(),
        unit: Some(7),
        model: Some("chint-dtsu666".into()),
        ts_ms: 1_795_000_000_123,
        online: None,
        last_ok_ms: None,
        polls: 3,
        successes: 2,
        timeouts: 1,
        crc_errors: 0,
        wrong_unit: 0,
        exceptions: 0,
        consecutive_failures: 0,
        latency_ms: Some(41.6),
        last_error: None,
        address: None,
        items: None,
    }
}

/// A store of schema 2 kept each meter's state as its retained payload; opening it carries
/// the figures over into the typed meter states.
#[test]
fn a_schema_2_store_keeps_its_meter_states() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("amr.db");
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        for step in &schema::MIGRATIONS[..2] {
            let tx = conn.transaction().unwrap();
            tx.execute_batch(step.sql).unwrap();
            tx.pragma_update(None, "user_version", step.version)
                .unwrap();
            tx.commit().unwrap();
        }
        let payload = r#"{"bus":"rs485","consecutive_failures":0,"crc_errors":0,"exceptions":0,"last_error":"timeout","last_ok":"2026-11-18T11:06:39.123Z","latency_ms":42.0,"meter":"m1","model":"chint-dtsu666","polls":3,"state":"online","success_rate_pct":66.7,"timeouts":1,"ts":"2026-11-18T11:06:40.123Z","unit":7,"wrong_unit":0}"#;
        conn.execute(
            "INSERT INTO meter_state (meter, state_json, updated_ms) VALUES ('m1', ?1, 9)",
            [payload],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO meter_state (meter, state_json, updated_ms) VALUES ('bad', 'nonsense', 9)",
            [],
        )
        .unwrap();
    }
    let store = Store::open(&path, &cfg()).unwrap();
    assert_eq!(store.schema_version().unwrap(), newest_schema());
    let states = store.meter_states().unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(
        states["m1"],
        MeterState {
            online: Some(true),
            last_ok_ms: Some(1_795_000_000_123 - 1_000),
            latency_ms: Some(42.0),
            last_error: Some("timeout".into()),
            ..meter_state("m1")
        }
    );
}

#[test]
fn prune_deletes_history_older_than_history_days() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreSettings {
        history_days: 2,
        max_size_mb: 1024,
        commit_window_ms: 0,
    };
    let mut store = Store::open(&dir.path().join("amr.db"), &cfg).unwrap();
    let day = 86_400_000;
    let now = 10 * day;
    let batch = Batch {
        readings: (0..10).map(|d| reading("m1", d * day, d as f64)).collect(),
        messages: vec![message(1)],
        ..Default::default()
    };
    store.commit(&batch).unwrap();
    let report = store.prune(now).unwrap();
    assert_eq!(report.expired_readings, 8); // days 0..=7 are more than 2 days old
    assert_eq!(report.evicted_readings, 0);
    assert_eq!(report.dropped_messages, 0);
    let kept: Vec<i64> = store
        .history("m1", 0, i64::MAX)
        .unwrap()
        .iter()
        .map(|r| r.ts_ms / day)
        .collect();
    assert_eq!(kept, vec![8, 9]);
    assert_eq!(seqs(&store), vec![1]);
}

#[test]
fn prune_keeps_the_store_under_its_size_bound() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreSettings {
        history_days: 36500,
        max_size_mb: 1,
        commit_window_ms: 0,
    };
    let path = dir.path().join("amr.db");
    let mut store = Store::open(&path, &cfg).unwrap();
    let now = 1_800_000_000_000;
    let values: BTreeMap<String, f64> = crate::model::QUANTITIES
        .iter()
        .map(|q| (q.to_string(), 1234.567_f64.sqrt()))
        .collect();
    // ~3 MB of history (values with no shorter form than their f64: about 300 bytes a
    // reading), then the outbox.
    for chunk in 0..100 {
        let readings = (0..100)
            .map(|i| Reading {
                meter: "m1".into(),
                ts_ms: now - 1_000_000 + chunk * 100 + i,
                values: values.clone(),
            })
            .collect();
        store
            .commit(&Batch {
                readings,
                messages: vec![],
                ..Default::default()
            })
            .unwrap();
    }
    store
        .commit(&Batch {
            readings: vec![],
            messages: (0..500).map(message).collect(),
            ..Default::default()
        })
        .unwrap();
    assert!(store.used_bytes().unwrap() > 2 * 1024 * 1024);

    let report = store.prune(now).unwrap();
    assert!(report.used_bytes <= 1024 * 1024, "{report:?}");
    assert!(report.evicted_readings > 0, "{report:?}");
    assert_eq!(report.dropped_messages, 0, "{report:?}");
    let left = store.history("m1", 0, i64::MAX).unwrap();
    assert!(!left.is_empty());
    // The newest history survived; the oldest went.
    assert_eq!(left.last().unwrap().ts_ms, now - 1_000_000 + 99 * 100 + 99);
    assert_eq!(seqs(&store).len(), 500);

    // A bound smaller than the outbox alone: history goes entirely, then the oldest messages.
    let tiny = StoreSettings {
        history_days: 36500,
        max_size_mb: 1,
        commit_window_ms: 0,
    };
    drop(store);
    let mut store = Store::open(&path, &tiny).unwrap();
    store
        .commit(&Batch {
            readings: vec![],
            messages: (0..15000).map(message).collect(),
            ..Default::default()
        })
        .unwrap();
    let report = store.prune(now).unwrap();
    assert!(report.used_bytes <= 1024 * 1024, "{report:?}");
    assert!(report.dropped_messages > 0, "{report:?}");
    assert!(store.history("m1", 0, i64::MAX).unwrap().is_empty());
    let remaining = seqs(&store);
    // What is left is the newest, contiguous tail.
    assert_eq!(*remaining.last().unwrap(), 15500);
    assert!(remaining.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(store.integrity_check().unwrap(), "ok");
}

/// The newest schema version this build knows.
fn newest_schema() -> i64 {
    super::schema::MIGRATIONS.last().unwrap().version
}

#[test]
fn learned_facts_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    {
        let mut s = Store::open(&path, &cfg()).unwrap();
        s.remember("m1", &Learned::BlockLimit(40)).unwrap();
        let refused = Learned::RefusedBlocks(vec!["0001FF00".into(), "0201FF00".into()]);
        s.remember("h7", &refused).unwrap();
        // A later fact of the same kind replaces the earlier one.
        let more = Learned::RefusedBlocks(vec![
            "0001FF00".into(),
            "0201FF00".into(),
            "0202FF00".into(),
        ]);
        s.remember("h7", &more).unwrap();
    }
    let s = Store::open(&path, &cfg()).unwrap();
    assert_eq!(s.block_limits().unwrap().get("m1"), Some(&40));
    let learned = s.learned().unwrap();
    assert_eq!(learned.len(), 2);
    assert!(learned.contains(&("m1".to_string(), Learned::BlockLimit(40))));
    assert!(learned.contains(&(
        "h7".to_string(),
        Learned::RefusedBlocks(vec![
            "0001FF00".into(),
            "0201FF00".into(),
            "0202FF00".into()
        ])
    )));
}

#[test]
fn over_its_bound_the_store_keeps_billing_data_longest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreSettings {
        history_days: 36500,
        max_size_mb: 1,
        commit_window_ms: 0,
    };
    let mut store = Store::open(&dir.path().join("amr.db"), &cfg).unwrap();
    let now = 1_800_000_000_000;
    let filler = "x".repeat(500);
    let mut messages = Vec::new();
    for n in 0..3300 {
        let mut m = message(n);
        if n % 11 == 0 {
            m.topic = format!("amr/gw/freeze/m{n}");
        }
        messages.push(m);
    }
    let record = |kind, n: i64| Record {
        kind,
        subject: format!("m{n}"),
        ts_ms: now - 1_000_000 + n,
        body: json!({"n": n, "filler": filler}).into(),
    };
    let mut records: Vec<Record> = (0..2000).map(|n| record(RecordKind::Alarm, n)).collect();
    records.extend((0..300).map(|n| record(RecordKind::FreezeDay, n)));
    store
        .commit(&Batch {
            readings: (0..6000)
                .map(|i| reading("m1", now - 5_000_000 + i, 1.0))
                .collect(),
            messages,
            records,
            ..Default::default()
        })
        .unwrap();
    assert!(store.used_bytes().unwrap() > 2 * 1024 * 1024);

    let report = store.prune(now).unwrap();
    assert!(report.used_bytes <= 1024 * 1024, "{report:?}");
    assert!(store.history("m1", 0, i64::MAX).unwrap().is_empty());
    // Every real-time message went before any record; every billing message stayed.
    let left = store.pending(0, usize::MAX).unwrap();
    assert!(
        left.iter().all(|r| r.topic.contains("/freeze/")),
        "{report:?}"
    );
    assert_eq!(left.len(), 300);
    assert_eq!(report.dropped_messages, 3000);
    // Alarm records went, oldest first; the freezes stayed.
    assert!(report.dropped_records > 0, "{report:?}");
    let alarms = store
        .records(RecordKind::Alarm, None, 0, i64::MAX, 10_000)
        .unwrap();
    assert!(alarms.len() < 2000);
    assert!(
        alarms
            .iter()
            .all(|r| r.ts_ms >= now - 1_000_000 + 2000 - alarms.len() as i64)
    );
    let freezes = store
        .records(RecordKind::FreezeDay, None, 0, i64::MAX, 10_000)
        .unwrap();
    assert_eq!(freezes.len(), 300);
    assert_eq!(store.integrity_check().unwrap(), "ok");
}

/// The message of `r` as the contract renders it (`Topics::reading_message`; the pipeline's
/// tests check the two agree), optionally marked as the writer marks it.
fn reading_message_of(r: &Reading, clock_unsynchronized: bool) -> Message {
    let mut payload = reading_payload(r);
    payload.insert(KIND_SEQ_FIELD.into(), json!(READING_KIND));
    if clock_unsynchronized {
        payload.insert("clock".into(), json!("unsynchronized"));
    }
    Message {
        topic: format!("amr/gw/reading/{}", r.meter),
        payload: serde_json::Value::Object(payload).into(),
        qos: 1,
        retain: false,
        sequenced: true,
    }
}

#[test]
fn a_reading_is_stored_once_and_sent_and_recalled_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("amr.db");
    let mut r1 = reading("m1", 1_764_000_000_000, 1.5);
    r1.values.insert("voltage_l1_v".into(), 229.123_456_789);
    r1.values.insert("current_l1_a".into(), f64::NAN);
    let r2 = reading("m2", 1_764_000_001_000, 7.25);
    // Another sequenced message first, so that seq and kind_seq differ.
    let other = Message {
        topic: "amr/gw/loss/T1".into(),
        payload: json!({"area": "T1", "kind_seq": "loss", "end": "2025-11-24T16:00:00Z"}).into(),
        qos: 1,
        retain: false,
        sequenced: true,
    };
    // A message that names a reading but says something else keeps its copy.
    let mut altered = reading_message_of(&r2, false);
    altered.payload["values"]["energy_import_kwh"] = json!(7.0);
    let batch = Batch {
        readings: vec![r1.clone(), r2.clone()],
        messages: vec![
            other,
            reading_message_of(&r1, false),
            reading_message_of(&r2, true),
            altered,
        ],
        ..Default::default()
    };
    // What was published before schema 7: the payload numbered by the store.
    let numbered = |m: &Message, seq: u64, kind_seq: u64| {
        let mut p = m.payload.clone();
        p["seq"] = json!(seq);
        p["kind_seq"] = json!(kind_seq);
        p.to_string().into_bytes()
    };
    let expected = [
        numbered(&reading_message_of(&r1, false), 2, 1),
        numbered(&reading_message_of(&r2, true), 3, 2),
        numbered(&batch.messages[3], 4, 3),
    ];
    {
        let mut store = Store::open(&path, &cfg()).unwrap();
        store.commit(&batch).unwrap();
        let copies: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM published", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            copies, 2,
            "only the loss message and the altered one are copied"
        );
        let rows = store.pending(0, usize::MAX).unwrap();
        assert_eq!(rows.len(), 4);
        for (row, want) in rows[1..].iter().zip(&expected) {
            assert_eq!(
                String::from_utf8_lossy(&row.payload),
                String::from_utf8_lossy(want)
            );
        }
        assert_eq!(rows[1].topic, "amr/gw/reading/m1");
    }
    // Reopened: recall by seq and by kind and time render the same bytes and topics.
    let store = Store::open(&path, &cfg()).unwrap();
    let by_seq = store.published(2, 4, 10).unwrap();
    assert_eq!(by_seq.iter().map(|p| p.seq).collect::<Vec<_>>(), [2, 3, 4]);
    for (p, want) in by_seq.iter().zip(&expected) {
        assert_eq!(p.payload.as_bytes(), want.as_slice());
    }
    assert_eq!(by_seq[0].topic, "amr/gw/reading/m1");
    let by_kind = store
        .published_by_kind(READING_KIND, 0, i64::MAX, "amr/gw/reading/m2", 10)
        .unwrap();
    assert_eq!(by_kind.iter().map(|p| p.seq).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(by_kind[0].payload.as_bytes(), expected[1].as_slice());
    assert_eq!(
        store.published(1, 4, 2).unwrap().len(),
        2,
        "the limit holds"
    );
    // An unsent reading's row outlives the history bound until it is sent.
    let mut store = store;
    store.prune(i64::MAX / 2).unwrap();
    let rows = store.pending(0, usize::MAX).unwrap();
    assert_eq!(rows[1].payload, expected[0]);
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    store.ack(&ids).unwrap();
    store.prune(i64::MAX / 2).unwrap();
    assert!(store.history("m1", 0, i64::MAX).unwrap().is_empty());
}

/// A kept message and its record as the analytics commit them (body = the payload before
/// numbering).
fn kept(
    kind: RecordKind,
    subject: &str,
    ts_ms: i64,
    topic: &str,
    payload: serde_json::Value,
) -> (Record, Message) {
    let record = Record {
        kind,
        subject: subject.into(),
        ts_ms,
        body: payload.clone().into(),
    };
    let message = Message {
        topic: topic.into(),
        payload: payload.into(),
        qos: 1,
        retain: false,
        sequenced: true,
    };
    (record, message)
}

#[test]
fn a_curve_message_is_stored_once_and_sent_and_recalled_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("amr.db");
    let start = 1_764_000_000_000;
    let (curve, curve_msg) = kept(
        RecordKind::Curve,
        "m1",
        start,
        "amr/gw/curve/m1",
        json!({
            "meter": "m1", "kind_seq": "curve",
            "start": "2025-11-24T16:00:00.000Z", "end": "2025-11-24T17:00:00.000Z",
            "points": [{"t": 0, "voltage_l1_v": 229.123_456_789, "p_kw": -0.1}, {"t": 900, "p_kw": 1e-7}],
        }),
    );
    // A record whose message says something else keeps its copy.
    let (loss, mut loss_msg) = kept(
        RecordKind::Loss,
        "T1",
        start,
        "amr/gw/loss/T1",
        json!({"area": "T1", "kind_seq": "loss", "end": "2025-11-24T16:15:00.000Z", "loss_pct": 3.5}),
    );
    loss_msg.payload["loss_pct"] = json!(3.25);
    let reading_msg = message(9);
    let batch = Batch {
        records: vec![loss, curve],
        messages: vec![reading_msg, curve_msg.clone(), loss_msg.clone()],
        ..Default::default()
    };
    let numbered = |m: &Message, seq: u64, kind_seq: u64| {
        let mut p = m.payload.clone();
        p["seq"] = json!(seq);
        p["kind_seq"] = json!(kind_seq);
        p.to_string()
    };
    let curve_text = numbered(&curve_msg, 2, 1);
    let loss_text = numbered(&loss_msg, 3, 1);
    {
        let mut store = Store::open(&path, &cfg()).unwrap();
        store.commit(&batch).unwrap();
        let copied: Vec<i64> = store
            .conn
            .prepare("SELECT seq FROM published ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(copied, [1, 3], "the curve has no published copy");
        let on_record: (i64, i64, String) = store
            .conn
            .query_row(
                "SELECT seq, kind_seq, topic FROM record WHERE kind = 'curve'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(on_record, (2, 1, "amr/gw/curve/m1".to_string()));
        let rows = store.pending(0, usize::MAX).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(String::from_utf8_lossy(&rows[1].payload), curve_text);
        assert_eq!(rows[1].topic, "amr/gw/curve/m1");
        assert_eq!(String::from_utf8_lossy(&rows[2].payload), loss_text);
        // An unsent curve's record outlives the history bound until it is sent.
        store.prune(i64::MAX / 2).unwrap();
        let rows = store.pending(0, usize::MAX).unwrap();
        assert_eq!(String::from_utf8_lossy(&rows[1].payload), curve_text);
        assert_eq!(
            store
                .records(RecordKind::Curve, None, 0, i64::MAX, 10)
                .unwrap()
                .len(),
            1
        );
    }
    // Reopened and sent: recall by seq and by kind and time render the same bytes and topic.
    let mut store = Store::open(&path, &cfg()).unwrap();
    let ids: Vec<i64> = store
        .pending(0, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    store.ack(&ids).unwrap();
    let by_seq = store.published(2, 3, 10).unwrap();
    assert_eq!(by_seq.iter().map(|p| p.seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(by_seq[0].payload, curve_text);
    assert_eq!(by_seq[0].topic, "amr/gw/curve/m1");
    assert_eq!(by_seq[1].payload, loss_text);
    let end = crate::clock::parse_rfc3339("2025-11-24T17:00:00.000Z").unwrap();
    let by_time = store
        .published_by_kind("curve", end, end + 1, "amr/gw/curve/*", 10)
        .unwrap();
    assert_eq!(by_time.len(), 1);
    assert_eq!(
        (by_time[0].seq, by_time[0].payload.as_str()),
        (2, curve_text.as_str())
    );
    assert!(
        store
            .published_by_kind("curve", end + 1, end + 2, "*", 10)
            .unwrap()
            .is_empty(),
        "by the message's time (the block's end)"
    );
    // A store recovered goes on from the numbers on the records, even when their counter
    // in `meta` is lost.
    drop(store);
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "DELETE FROM meta WHERE key = ?1",
            [MetaKey::KindSeq("curve".into()).key()],
        )
        .unwrap();
    let mut store = Store::open(&path, &cfg()).unwrap();
    store.recover("test").unwrap();
    let (curve2, curve2_msg) = kept(
        RecordKind::Curve,
        "m1",
        start + 3_600_000,
        "amr/gw/curve/m1",
        json!({"meter": "m1", "kind_seq": "curve", "end": "2025-11-24T18:00:00.000Z"}),
    );
    store
        .commit(&Batch {
            records: vec![curve2],
            messages: vec![curve2_msg.clone()],
            ..Default::default()
        })
        .unwrap();
    let rows = store.pending(0, usize::MAX).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&rows.last().unwrap().payload),
        numbered(&curve2_msg, 4, 2)
    );
    // Sent, a curve's record goes with the history.
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    store.ack(&ids).unwrap();
    store.prune(i64::MAX / 2).unwrap();
    assert!(store.published(1, 10, 10).unwrap().is_empty());
}

/// A store far over its bound is pruned in bounded steps, and between the steps it is used as
/// the gateway uses it: the publisher reads and acknowledges, the writer commits new readings.
/// It ends under its bound with the oldest unsent readings dropped first, their history rows
/// with them, and everything newer — the readings committed meanwhile too — still unsent.
#[test]
fn a_store_over_its_bound_is_pruned_in_steps_while_it_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreSettings {
        history_days: 35,
        max_size_mb: 1,
        commit_window_ms: 0,
    };
    let mut store = Store::open(&dir.path().join("amr.db"), &cfg).unwrap();
    let now = 1_800_000_000_000;
    let values: BTreeMap<String, f64> = crate::model::QUANTITIES
        .iter()
        .enumerate()
        .map(|(i, q)| (q.to_string(), 1000.0 + i as f64 * 1.001))
        .collect();
    let batch_of = |from: i64, n: i64| {
        let readings: Vec<Reading> = (from..from + n)
            .map(|i| Reading {
                meter: format!("m{}", i % 50),
                ts_ms: now - 3_600_000 + i,
                values: values.clone(),
            })
            .collect();
        Batch {
            messages: readings
                .iter()
                .map(|r| reading_message_of(r, false))
                .collect(),
            readings,
            ..Default::default()
        }
    };
    // Delivered history first (the oldest), then 30,000 unsent readings: several MiB.
    store.commit_at(&batch_of(0, 2000), now).unwrap();
    let delivered: Vec<i64> = store
        .pending(0, 2000)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    store.ack(&delivered).unwrap();
    for k in 0..15 {
        store
            .commit_at(&batch_of(2000 + k * 2000, 2000), now)
            .unwrap();
    }
    let before = store.used_bytes().unwrap();
    assert!(before > 5 * 1024 * 1024, "{before}");
    let backlog = store.backlog().unwrap().0;
    assert_eq!(backlog, 30_000);

    let mut pruning = Pruning::new(now);
    let mut live = 32_000;
    let mut published = Vec::new();
    while !pruning.is_done() {
        let was = pruning.report().clone();
        store.prune_step(&mut pruning).unwrap();
        let report = pruning.report();
        let messages = report.dropped_messages - was.dropped_messages;
        let rows = report.evicted_readings - was.evicted_readings + report.dropped_records
            - was.dropped_records;
        assert!(
            messages as i64 <= STEP_ROWS && rows as i64 <= STEP_ROWS,
            "a step deletes at most {STEP_ROWS} rows: {report:?} after {was:?}"
        );
        // Between the steps: the publisher reads the oldest rows (the broker takes a few now
        // and then: each delivered reading's row is history that goes before unsent ones),
        // the writer commits new readings.
        let rows = store.pending(0, 10).unwrap();
        assert_eq!(rows.len(), 10);
        if pruning.steps() % 20 == 0 {
            published.extend(rows.iter().map(|r| r.id));
            store
                .ack(&rows.iter().map(|r| r.id).collect::<Vec<_>>())
                .unwrap();
        }
        store.commit_at(&batch_of(live, 10), now).unwrap();
        live += 10;
    }
    let report = pruning.report().clone();
    assert!(pruning.steps() > 5, "{} steps", pruning.steps());
    assert!(report.used_bytes <= 1024 * 1024, "{report:?}");
    assert!(report.dropped_messages > 10_000, "{report:?}");
    assert_eq!(report.dropped_records, 0, "{report:?}");
    // The delivered history went first, then the oldest unsent readings with their rows.
    assert!(
        report.evicted_readings >= 2000 + report.dropped_messages,
        "{report:?}"
    );
    let left = seqs(&store);
    let newest = 30_000 + 2000 + (live - 32_000) as u64;
    assert_eq!(*left.last().unwrap(), newest);
    assert!(
        left.windows(2).all(|w| w[1] == w[0] + 1),
        "a contiguous tail"
    );
    // Every unsent reading left is rendered from its history row; none of the dropped has one.
    assert_eq!(store.pending(0, usize::MAX).unwrap().len(), left.len());
    assert!(
        store
            .pending(0, usize::MAX)
            .unwrap()
            .iter()
            .all(|r| !r.payload.is_empty())
    );
    let rows: i64 = store
        .conn
        .query_row("SELECT COUNT(*) FROM history", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows as usize, left.len());
    assert_eq!(store.integrity_check().unwrap(), "ok");
}
