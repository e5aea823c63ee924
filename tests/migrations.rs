//! Upgrades: a store written by every released schema version opens and migrates, and what it
//! held survives; a store from a newer version is refused with a clear message and left in
//! place.
//!
//! The fixtures (`tests/fixtures/stores/v{N}.sqlite`) are real SQLite files made with the
//! schema SQL of the commit that shipped each version and filled with rows shaped as that
//! version wrote them (`tests/fixtures/stores/make.py`). A new schema version adds its fixture.

use amr_gateway::model::Reading;
use amr_gateway::store::{Batch, Message, MetaKey, RecordKind, Store, StoreSettings};
use std::path::{Path, PathBuf};

/// 2026-01-01T00:00:00Z, the fixtures' first reading.
const T0: i64 = 1_767_225_600_000;
/// The schema version the running code writes.
const NEWEST: i64 = 7;

fn settings() -> StoreSettings {
    StoreSettings {
        history_days: 3650,
        max_size_mb: 64,
        commit_window_ms: 0,
    }
}

/// A copy of fixture `v{version}.sqlite` in `dir` (a test never changes the checked-in file).
fn copy_of(version: i64, dir: &Path) -> PathBuf {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/stores")
        .join(format!("v{version}.sqlite"));
    let to = dir.join("amr-gateway.db");
    std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    to
}

fn user_version(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

#[test]
fn every_released_schema_version_opens_migrates_and_keeps_its_data() {
    for version in 1..=NEWEST {
        let dir = tempfile::tempdir().unwrap();
        let path = copy_of(version, dir.path());
        assert_eq!(user_version(&path), version, "fixture v{version}");
        let mut store =
            Store::open(&path, &settings()).unwrap_or_else(|e| panic!("v{version}: {e}"));
        assert_eq!(store.schema_version().unwrap(), NEWEST, "v{version}");
        assert_eq!(store.integrity_check().unwrap(), "ok", "v{version}");

        // History.
        let history = store.history("m1", T0, T0 + 120_000).unwrap();
        assert_eq!(history.len(), 2, "v{version}: {history:?}");
        assert_eq!(history[0].values["energy_import_kwh"], 1234.5);
        assert_eq!(history[1].values["voltage_l1_v"], 229.9);

        // The unsent outbox, and seq goes on from where it was.
        let pending = store.pending(0, 10).unwrap();
        assert_eq!(pending.len(), 2, "v{version}");
        assert_eq!(pending[0].topic, "amr/gw1/reading/m1");
        let first = String::from_utf8_lossy(&pending[0].payload).to_string();
        assert!(first.contains("\"seq\":1"), "v{version}: {first}");
        assert_eq!(store.backlog().unwrap(), (2, Some(T0)), "v{version}");
        assert_eq!(store.last_seq().unwrap(), 2, "v{version}");
        assert_eq!(
            store.meta(&MetaKey::LastAlive).unwrap().as_deref(),
            Some(&*(T0 + 60_000).to_string())
        );

        // The meter's state: from the retained payload (v1, v2) or typed (v3 on).
        let states = store.meter_states().unwrap();
        let m1 = states
            .get("m1")
            .unwrap_or_else(|| panic!("v{version}: {states:?}"));
        assert_eq!(
            (m1.bus.as_str(), m1.unit, m1.online),
            ("rs485", Some(1), Some(true)),
            "v{version}"
        );
        assert_eq!(
            (m1.polls, m1.successes, m1.timeouts),
            (10, 9, 1),
            "v{version}"
        );
        assert_eq!(m1.last_ok_ms, Some(T0 + 60_000), "v{version}");

        // Loss records (v2 on).
        let loss = store
            .records(RecordKind::Loss, Some("T1"), T0, T0 + 3_600_000, 10)
            .unwrap();
        assert_eq!(loss.len(), usize::from(version >= 2), "v{version}");
        if let Some(r) = loss.first() {
            assert_eq!(r.body["loss_kwh"], 1.5);
        }

        // The migrated store takes new data: a meta key of today's code.
        store.set_meta(&MetaKey::CleanStop, "stopped").unwrap();
        drop(store);
        // And opens again as it is.
        let store = Store::open(&path, &settings()).unwrap();
        assert_eq!(store.schema_version().unwrap(), NEWEST);
        assert_eq!(
            store.meta(&MetaKey::CleanStop).unwrap().as_deref(),
            Some("stopped")
        );
    }
}

#[test]
fn every_schema_version_has_its_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stores");
    // A fresh store is at the newest version: a new version needs its fixture here.
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("fresh.db"), &settings()).unwrap();
    let newest = store.schema_version().unwrap();
    assert_eq!(
        newest, NEWEST,
        "a new schema version: add its fixture (tests/fixtures/stores/make.py) and raise NEWEST"
    );
    for version in 1..=newest {
        assert!(
            dir.join(format!("v{version}.sqlite")).is_file(),
            "v{version}"
        );
    }
}

#[test]
fn a_store_from_a_newer_version_is_refused_with_a_clear_message_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_of(NEWEST, dir.path());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", NEWEST + 1)
            .unwrap();
    }
    let Err(err) = Store::open(&path, &settings()) else {
        panic!("a newer store was opened")
    };
    let text = err.to_string();
    assert!(
        text.contains(&format!("schema version {} is newer", NEWEST + 1))
            && text.contains("run a newer amr-gateway")
            && text.contains(&path.display().to_string()),
        "{text}"
    );
    // The daemon's way of opening does not take it for damage: it is neither moved aside nor
    // replaced.
    let Err(err) = Store::open_or_recover(&path, &settings()) else {
        panic!("a newer store was opened or replaced")
    };
    assert!(err.to_string().contains("is newer"), "{err}");
    // Left where it was, as it was (opening may switch it to WAL, nothing more).
    let conn = rusqlite::Connection::open(&path).unwrap();
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM history", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 2);
    drop(conn);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with("amr-gateway.db")),
        "{names:?}"
    );
    assert_eq!(user_version(&path), NEWEST + 1);
}

/// Schema 7 stores a reading's message as its history row. A v6 store's unsent readings (with
/// their `published` copies) are sent byte for byte as they were, and the readings stored
/// after the upgrade are sent and recalled from their rows, numbered on from the old ones.
#[test]
fn a_v6_store_with_unsent_readings_still_sends_them_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_of(6, dir.path());
    let old: Vec<Vec<u8>> = {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mut stmt = conn
            .prepare("SELECT CAST(payload AS BLOB) FROM published ORDER BY seq")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(old.len(), 2);
    let mut store = Store::open(&path, &settings()).unwrap();
    let reading = Reading {
        meter: "m1".into(),
        ts_ms: T0 + 120_000,
        values: [("energy_import_kwh".to_string(), 1234.7)].into(),
    };
    let mut payload = amr_gateway::store::reading_payload(&reading);
    payload.insert("kind_seq".into(), "reading".into());
    store
        .commit(&Batch {
            readings: vec![reading],
            messages: vec![Message {
                topic: "amr/gw1/reading/m1".into(),
                payload: serde_json::Value::Object(payload).into(),
                qos: 1,
                retain: false,
                sequenced: true,
            }],
            ..Batch::default()
        })
        .unwrap();
    let pending = store.pending(0, 10).unwrap();
    assert_eq!(pending.len(), 3);
    assert_eq!(pending[0].payload, old[0]);
    assert_eq!(pending[1].payload, old[1]);
    let new: serde_json::Value = serde_json::from_slice(&pending[2].payload).unwrap();
    assert_eq!(new["seq"], 3);
    assert_eq!(new["kind_seq"], 1);
    assert_eq!(new["values"]["energy_import_kwh"], 1234.7);
    assert_eq!(pending[2].topic, "amr/gw1/reading/m1");
    let recalled = store.published(1, 3, 10).unwrap();
    assert_eq!(recalled.len(), 3);
    assert_eq!(
        recalled[2].payload.as_bytes(),
        pending[2].payload.as_slice()
    );
    assert_eq!(recalled[2].topic, "amr/gw1/reading/m1");
    // Sent: acknowledged, the rows go, the readings stay in the history.
    let ids: Vec<i64> = pending.iter().map(|r| r.id).collect();
    store.ack(&ids).unwrap();
    assert_eq!(store.backlog().unwrap().0, 0);
    assert_eq!(store.history("m1", T0, T0 + 180_000).unwrap().len(), 3);
}
