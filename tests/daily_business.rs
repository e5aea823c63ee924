//! The utility's daily business through the store writer and a real store: in Asia/Shanghai,
//! daily freezes of every meter at local midnight (16:00 UTC), a meter silent over midnight
//! missing from the day's collection report and frozen late when it answers, the daily loss
//! of the area from two days' freezes against the truth, the records kept beyond the history
//! bound, a restart that does not freeze twice, and `status` showing the collection.

use amr_gateway::bus::BusEvent;
use amr_gateway::clock::parse_rfc3339;
use amr_gateway::config::{Config, load_str};
use amr_gateway::model::Reading;
use amr_gateway::pipeline::Writer;
use amr_gateway::store::{RecordKind, Store};
use amr_gateway::uplink::contract::Topics;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

const CONFIG: &str = r#"
[gateway]
id = "gw"
data_dir = "data"
timezone = "Asia/Shanghai"

[mqtt]
host = "127.0.0.1"

[store]
history_days = 1

[[bus]]
name = "rs485-1"
protocol = "modbus-rtu"
device = "/dev/null"

[[bus]]
name = "rs485-2"
protocol = "modbus-rtu"
device = "/dev/null2"

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
bus = "rs485-2"
unit = 3
model = "eastron-sdm120"

[[area]]
id = "T1"
supply = ["s"]
customers = ["c1", "c2"]
loss_interval_s = 900

[collection]
report_at = "00:30"
"#;

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;

/// Registers: supply 12 kW, c1 5 kW, c2 6 kW (1 kW of loss), from `t0`.
fn kwh(meter: &str, t: i64, t0: i64) -> f64 {
    let h = (t - t0) as f64 / HOUR as f64;
    match meter {
        "s" => 10_000.0 + 12.0 * h,
        "c1" => 100.0 + 5.0 * h,
        _ => 200.0 + 6.0 * h,
    }
}

fn config(dir: &Path) -> Config {
    load_str(CONFIG, &dir.join("amr.toml")).expect("test configuration")
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

/// Reads once a minute per meter over `[from, to)` (c2 silent where `silent` says), a writer
/// step after each minute, committed.
fn run(
    writer: &mut Writer,
    store: &mut Store,
    from: i64,
    to: i64,
    t0: i64,
    silent: impl Fn(i64) -> bool,
) {
    let mut t = from;
    while t < to {
        let mut events = Vec::new();
        for (i, m) in ["s", "c1", "c2"].iter().enumerate() {
            let ts = t + 5_000 + 9_000 * i as i64;
            if *m == "c2" && silent(ts) {
                continue;
            }
            events.push(reading(m, ts, kwh(m, ts, t0)));
        }
        let now = t + MIN - 1;
        let fold = writer.fold(events, now);
        store.commit_at(&fold.batch, now).unwrap();
        t += MIN;
    }
}

fn sent(store: &Store, topic: &str) -> Vec<Value> {
    store
        .pending(0, 10_000_000)
        .unwrap()
        .iter()
        .filter(|r| r.topic == topic)
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect()
}

#[test]
fn freezes_collection_and_daily_loss_in_local_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let topics = Topics::new("amr", "gw");
    let mut store = Store::open(&config.db_path(), &config.store).unwrap();
    // Local midnights of 2026-11-23 and 2026-11-24 in Shanghai.
    let m1 = parse_rfc3339("2026-11-22T16:00:00Z").unwrap();
    let m2 = m1 + 24 * HOUR;
    let t0 = m1 - HOUR;
    let (mut writer, batch) =
        Writer::start(&config.pipeline_settings(), topics.clone(), &store, t0).unwrap();
    store.commit_at(&batch, t0).unwrap();

    // c2 is silent from 23:30 to 02:00 local around the first midnight (too far from it to
    // be extrapolated).
    let silent = |ts: i64| ts >= m1 - 30 * MIN && ts < m1 + 2 * HOUR;
    run(&mut writer, &mut store, t0, m1 + HOUR, t0, silent);

    let s = sent(&store, "amr/gw/freeze/s");
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0]["kind"], "day");
    assert_eq!(s[0]["day"], "2026-11-23");
    assert_eq!(s[0]["ts"], "2026-11-22T16:00:00.000Z");
    assert_eq!(s[0]["source"], "interpolated");
    assert!(
        (s[0]["values"]["energy_import_kwh"].as_f64().unwrap() - kwh("s", m1, t0)).abs() < 1e-3
    );
    assert!(s[0]["seq"].as_u64().is_some());
    assert!(sent(&store, "amr/gw/freeze/c2").is_empty());

    // The report at 00:30 local: c2 failed, on rs485-2 and in T1.
    let c = sent(&store, "amr/gw/collection");
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0]["day"], "2026-11-23");
    assert_eq!(
        (c[0]["configured"].as_u64(), c[0]["frozen"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(c[0]["failed"], serde_json::json!(["c2"]));
    assert_eq!(c[0]["buses"][0]["rate_pct"], 100.0);
    assert_eq!(c[0]["buses"][1]["failed"], serde_json::json!(["c2"]));
    assert_eq!(c[0]["areas"][0]["area"], "T1");
    // No daily loss yet: no day has freezes at both ends.
    assert!(sent(&store, "amr/gw/loss/T1/day").is_empty());

    assert_eq!(writer.analytics().freeze().waiting("c2"), [m1]);
    // A restart; c2 answers at 02:00 and gets its freeze late, once.
    drop(writer);
    let (mut writer, batch) = Writer::start(
        &config.pipeline_settings(),
        topics.clone(),
        &store,
        m1 + HOUR,
    )
    .unwrap();
    store.commit_at(&batch, m1 + HOUR).unwrap();
    assert_eq!(writer.analytics().freeze().waiting("c2"), [m1]);
    run(
        &mut writer,
        &mut store,
        m1 + HOUR,
        m1 + 3 * HOUR,
        t0,
        silent,
    );
    let c2 = sent(&store, "amr/gw/freeze/c2");
    assert_eq!(c2.len(), 1, "{c2:?}");
    assert_eq!(
        (c2[0]["late"].as_bool(), c2[0]["source"].as_str()),
        (Some(true), Some("interpolated"))
    );
    assert!(
        (c2[0]["values"]["energy_import_kwh"].as_f64().unwrap() - kwh("c2", m1, t0)).abs() < 1e-3
    );
    assert_eq!(
        sent(&store, "amr/gw/freeze/s").len(),
        1,
        "not again after the restart"
    );

    // Through the next midnight: the daily loss of 2026-11-23 from the two freezes.
    run(
        &mut writer,
        &mut store,
        m1 + 3 * HOUR,
        m2 + HOUR,
        t0,
        |_| false,
    );
    let l = sent(&store, "amr/gw/loss/T1/day");
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0]["day"], "2026-11-23");
    assert_eq!(l[0]["start"], "2026-11-22T16:00:00.000Z");
    assert_eq!(l[0]["end"], "2026-11-23T16:00:00.000Z");
    assert_eq!(l[0]["complete"], true);
    assert!(
        (l[0]["supply_kwh"].as_f64().unwrap() - 12.0 * 24.0).abs() < 1e-3,
        "{l:?}"
    );
    assert!(
        (l[0]["loss_pct"].as_f64().unwrap() - 100.0 / 12.0).abs() < 1e-3,
        "{l:?}"
    );
    let c = sent(&store, "amr/gw/collection");
    assert_eq!(c.len(), 2);
    assert_eq!(c[1]["rate_pct"], 100.0);

    // Once sent (an unsent kept message's record is its only payload and stays until then),
    // kept beyond history_days = 1, while the loss intervals go with the history.
    let ids: Vec<i64> = store
        .pending(0, 10_000_000)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    store.ack(&ids).unwrap();
    store.prune(m2 + 10 * 24 * HOUR).unwrap();
    assert_eq!(
        store
            .records(RecordKind::FreezeDay, None, 0, i64::MAX, 100)
            .unwrap()
            .len(),
        6
    );
    assert_eq!(
        store
            .records(RecordKind::Collection, None, 0, i64::MAX, 100)
            .unwrap()
            .len(),
        2
    );
    assert!(
        store
            .records(RecordKind::Loss, None, 0, i64::MAX, 100)
            .unwrap()
            .is_empty()
    );
    store.prune(m2 + 70 * 24 * HOUR).unwrap();
    assert!(
        store
            .records(RecordKind::FreezeDay, None, 0, i64::MAX, 100)
            .unwrap()
            .is_empty()
    );
    drop(store);
}

#[test]
fn status_shows_the_days_collection() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let mut store = Store::open(&config.db_path(), &config.store).unwrap();
    let m1 = parse_rfc3339("2026-11-22T16:00:00Z").unwrap();
    let t0 = m1 - 60 * MIN;
    let (mut writer, batch) = Writer::start(
        &config.pipeline_settings(),
        Topics::new("amr", "gw"),
        &store,
        t0,
    )
    .unwrap();
    store.commit_at(&batch, t0).unwrap();
    run(&mut writer, &mut store, t0, m1 + 40 * MIN, t0, |ts| {
        ts >= m1 - 30 * MIN
    });
    drop(store);
    let st = amr_gateway::field::status::collect(&config).unwrap();
    assert_eq!(st["collection"]["day"], "2026-11-23");
    let table = amr_gateway::field::status::table(&st);
    assert!(
        table.contains("collection 2026-11-23: 2 of 3 meters with a daily freeze (66.7 %)"),
        "{table}"
    );
    assert!(table.contains("failed: c2"), "{table}");
}

#[test]
fn load_curves_in_hourly_blocks_of_quarter_hours() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let topics = Topics::new("amr", "gw");
    let mut store = Store::open(&config.db_path(), &config.store).unwrap();
    let m1 = parse_rfc3339("2026-11-22T16:00:00Z").unwrap();
    let t0 = m1 - HOUR;
    let (mut writer, batch) =
        Writer::start(&config.pipeline_settings(), topics.clone(), &store, t0).unwrap();
    store.commit_at(&batch, t0).unwrap();
    // c2 silent for two hours from 00:50 local.
    let silent = |ts: i64| ts >= m1 + 50 * MIN && ts < m1 + 170 * MIN;
    run(&mut writer, &mut store, t0, m1 + 2 * HOUR, t0, silent);
    // A restart in the middle of a block.
    drop(writer);
    let (mut writer, batch) = Writer::start(
        &config.pipeline_settings(),
        topics.clone(),
        &store,
        m1 + 2 * HOUR,
    )
    .unwrap();
    store.commit_at(&batch, m1 + 2 * HOUR).unwrap();
    run(
        &mut writer,
        &mut store,
        m1 + 2 * HOUR,
        m1 + 4 * HOUR + 5 * MIN,
        t0,
        silent,
    );

    // The supply meter: one message an hour with four points each, 23:00 to 04:00 local (the
    // first without 23:00: it has no read before it).
    let s = sent(&store, "amr/gw/curve/s");
    assert_eq!(s.len(), 5, "{s:?}");
    for (i, block) in s.iter().enumerate() {
        let start = t0 + i as i64 * HOUR;
        assert_eq!(
            block["start"],
            amr_gateway::clock::rfc3339_ms(start),
            "{block}"
        );
        assert_eq!(block["interval_min"], 15);
        let points = block["points"].as_array().unwrap();
        assert_eq!(points.len(), if i == 0 { 3 } else { 4 }, "{block}");
        for p in points {
            let ts = amr_gateway::clock::parse_rfc3339(p["ts"].as_str().unwrap()).unwrap();
            assert_eq!((ts - start) % (15 * MIN), 0);
            assert_eq!(p["ts"], amr_gateway::clock::rfc3339_ms(ts));
            let e = p["energy"]["energy_import_kwh"].as_f64().unwrap();
            assert!((e - kwh("s", ts, t0)).abs() < 1e-3, "{p}");
            assert_eq!(p["instant"]["voltage_l1_v"], 230.0);
        }
        assert!(block["seq"].as_u64().is_some());
    }
    assert_eq!(s[1]["day"], "2026-11-23");

    // c2: no points while it was silent (00:45 is the last before, 03:00 the first after).
    let c2 = sent(&store, "amr/gw/curve/c2");
    let points: Vec<String> = c2
        .iter()
        .flat_map(|b| b["points"].as_array().unwrap().clone())
        .map(|p| p["ts"].as_str().unwrap().to_string())
        .collect();
    let local = |h: i64, m: i64| amr_gateway::clock::rfc3339_ms(m1 + h * HOUR + m * MIN);
    assert!(points.contains(&local(0, 45)), "{points:?}");
    assert!(!points.contains(&local(1, 0)), "{points:?}");
    assert!(!points.contains(&local(2, 45)), "{points:?}");
    assert!(points.contains(&local(3, 0)), "{points:?}");

    // Kept in the store, one record per meter and block.
    let kept = store
        .records(RecordKind::Curve, Some("s"), 0, i64::MAX, 100)
        .unwrap();
    assert_eq!(kept.len(), 5);
}

/// What a day of one meter costs in the store: run with
/// `cargo test --release --test daily_business store_sizing -- --ignored --nocapture`.
/// Ten three-phase meters read every minute for two local days through the store writer, every
/// message delivered (the outbox emptied as the broker's acknowledgements would); then the
/// bytes of each table and index (SQLite's `dbstat`), apportioned per reading, per record kind
/// and per recall copy. docs/benchmarks.md records the figures.
#[test]
#[ignore]
fn store_sizing() {
    const METERS: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from(
        "[gateway]\nid = \"gw\"\ndata_dir = \"data\"\ntimezone = \"Asia/Shanghai\"\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\n\n[[bus]]\nname = \"rs485-1\"\nprotocol = \"modbus-rtu\"\n\
         device = \"/dev/null\"\n",
    );
    for i in 0..METERS {
        text.push_str(&format!(
            "\n[[meter]]\nid = \"m{i}\"\nbus = \"rs485-1\"\nunit = {}\nmodel = \"eastron-sdm630\"\n",
            i + 1
        ));
    }
    text.push_str("\n[[area]]\nid = \"T1\"\nsupply = [\"m0\"]\ncustomers = [");
    text.push_str(
        &(1..METERS)
            .map(|i| format!("\"m{i}\""))
            .collect::<Vec<_>>()
            .join(", "),
    );
    text.push_str("]\n");
    let config = load_str(&text, &dir.path().join("amr.toml")).expect("sizing configuration");
    let topics = Topics::new("amr", "gw");
    let mut store = Store::open(&config.db_path(), &config.store).unwrap();
    let m1 = parse_rfc3339("2026-11-22T16:00:00Z").unwrap();
    let (t0, days) = (m1 - HOUR, 2);
    let (mut writer, batch) =
        Writer::start(&config.pipeline_settings(), topics, &store, t0).unwrap();
    store.commit_at(&batch, t0).unwrap();
    let mut t = t0;
    let mut readings = 0u64;
    while t < t0 + days * 24 * HOUR {
        let mut events = Vec::new();
        for i in 0..METERS {
            let ts = t + 1_000 * i as i64;
            let h = (ts - t0) as f64 / HOUR as f64;
            let kw = if i == 0 { 55.0 } else { 5.0 + i as f64 * 0.1 };
            let values: BTreeMap<String, f64> = amr_gateway::model::QUANTITIES
                .iter()
                .map(|q| {
                    let v = match *q {
                        q if q.starts_with("energy_import") => 1000.0 + kw * h,
                        q if q.ends_with("_kwh") || q.ends_with("_kvarh") => 12.5,
                        q if q.starts_with("voltage") => 229.7 + (ts % 7) as f64 * 0.1,
                        "frequency_hz" => 49.98,
                        "power_factor" => 0.97,
                        _ => kw / 3.0 + (ts % 5) as f64 * 0.01,
                    };
                    (q.to_string(), v)
                })
                .collect();
            events.push(BusEvent::Reading(amr_gateway::model::Reading {
                meter: format!("m{i}"),
                ts_ms: ts,
                values,
            }));
            readings += 1;
        }
        let now = t + MIN - 1;
        let fold = writer.fold(events, now);
        store.commit_at(&fold.batch, now).unwrap();
        t += MIN;
    }
    drop(store);
    let conn = rusqlite::Connection::open(config.db_path()).unwrap();
    conn.execute("DELETE FROM outbox", []).unwrap();
    conn.execute_batch("VACUUM").unwrap();
    let bytes = |name: &str| -> f64 {
        conn.query_row(
            "SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name = ?1 \
             OR name IN (SELECT name FROM sqlite_master WHERE tbl_name = ?1 AND type = 'index')",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as f64
    };
    println!("{METERS} meters, {days} days, {readings} readings");
    let history = bytes("history");
    println!(
        "history: {:.0} bytes per reading ({:.1} MB per meter-day at 1 read/min)",
        history / readings as f64,
        history / readings as f64 * 1440.0 / 1e6
    );
    // Records: the record table's bytes shared out by each kind's share of the body bytes.
    let record = bytes("record");
    let mut stmt = conn
        .prepare("SELECT kind, COUNT(*), SUM(length(body_json)) FROM record GROUP BY kind")
        .unwrap();
    let kinds: Vec<(String, i64, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let body_total: i64 = kinds.iter().map(|k| k.2).sum();
    for (kind, count, body) in &kinds {
        let share = record * *body as f64 / body_total as f64;
        println!(
            "record {kind}: {count} records, {:.0} bytes each, {:.1} kB per meter-day",
            share / *count as f64,
            share / (METERS as f64 * days as f64) / 1e3
        );
    }
    let published = bytes("published");
    let copies: i64 = conn
        .query_row("SELECT COUNT(*) FROM published", [], |r| r.get(0))
        .unwrap();
    println!(
        "published (recall copies): {copies} copies, {:.0} bytes each, {:.1} MB per meter-day",
        published / copies as f64,
        published / (METERS as f64 * days as f64) / 1e6
    );
}

/// A late freeze changes no report already sent: c2 is silent from 23:30 local over two
/// midnights and both days' decisions, then answers. Its two freezes come late, but the two
/// collection reports and the first day's daily loss (incomplete, c2 missing) are not issued
/// again; the next day's daily loss, whose freezes are all there by its decision, is complete.
#[test]
fn a_late_freeze_issues_no_second_collection_report_or_daily_loss() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let topics = Topics::new("amr", "gw");
    let mut store = Store::open(&config.db_path(), &config.store).unwrap();
    // Local midnights of 2026-11-23, -24 and -25 in Shanghai.
    let m1 = parse_rfc3339("2026-11-22T16:00:00Z").unwrap();
    let (m2, m3) = (m1 + 24 * HOUR, m1 + 48 * HOUR);
    let t0 = m1 - HOUR;
    let (mut writer, batch) =
        Writer::start(&config.pipeline_settings(), topics.clone(), &store, t0).unwrap();
    store.commit_at(&batch, t0).unwrap();
    let silent = |ts: i64| ts >= m1 - 30 * MIN && ts < m2 + 2 * HOUR;

    // Up to just before c2 answers: two reports, each with c2 failed, and one daily loss.
    run(&mut writer, &mut store, t0, m2 + 2 * HOUR, t0, silent);
    let c = sent(&store, "amr/gw/collection");
    assert_eq!(c.len(), 2, "{c:?}");
    for (r, day) in c.iter().zip(["2026-11-23", "2026-11-24"]) {
        assert_eq!(r["day"], day);
        assert_eq!(r["failed"], serde_json::json!(["c2"]), "{r}");
    }
    let l = sent(&store, "amr/gw/loss/T1/day");
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0]["day"], "2026-11-23");
    assert_eq!(l[0]["complete"], false);
    assert_eq!(l[0]["missing"], serde_json::json!(["c2"]));
    assert!(sent(&store, "amr/gw/freeze/c2").is_empty());
    assert_eq!(writer.analytics().freeze().waiting("c2"), [m1, m2]);

    // c2 answers: both freezes late, interpolated from the reads around each midnight.
    run(
        &mut writer,
        &mut store,
        m2 + 2 * HOUR,
        m2 + 3 * HOUR,
        t0,
        silent,
    );
    let f = sent(&store, "amr/gw/freeze/c2");
    assert_eq!(f.len(), 2, "{f:?}");
    for (freeze, (b, day)) in f.iter().zip([(m1, "2026-11-23"), (m2, "2026-11-24")]) {
        assert_eq!(freeze["day"], day);
        assert_eq!(
            (freeze["late"].as_bool(), freeze["source"].as_str()),
            (Some(true), Some("interpolated"))
        );
        let v = freeze["values"]["energy_import_kwh"].as_f64().unwrap();
        assert!((v - kwh("c2", b, t0)).abs() < 1e-3, "{freeze}");
    }
    assert_eq!(
        sent(&store, "amr/gw/collection").len(),
        2,
        "no report again"
    );
    assert_eq!(
        sent(&store, "amr/gw/loss/T1/day").len(),
        1,
        "no daily loss again"
    );

    // The next day's decision: c2 collected, and the day 2026-11-24 complete with its late
    // freeze at the start.
    run(
        &mut writer,
        &mut store,
        m2 + 3 * HOUR,
        m3 + HOUR,
        t0,
        |_| false,
    );
    let c = sent(&store, "amr/gw/collection");
    assert_eq!(c.len(), 3, "{c:?}");
    assert_eq!(c[2]["day"], "2026-11-25");
    assert_eq!(c[2]["rate_pct"], 100.0);
    let l = sent(&store, "amr/gw/loss/T1/day");
    assert_eq!(l.len(), 2, "{l:?}");
    assert_eq!(l[1]["day"], "2026-11-24");
    assert_eq!(l[1]["complete"], true, "{}", l[1]);
    assert!(
        (l[1]["loss_pct"].as_f64().unwrap() - 100.0 / 12.0).abs() < 1e-3,
        "{}",
        l[1]
    );
}
