//! DL/T 645-2007 meters' own daily freezes (日冻结) through the store writer and a real store:
//! a [`BusEvent::MeterFreeze`] (what the DL/T 645 driver emits a few minutes after local
//! midnight) becomes the day's freeze with `"source": "meter"` and the meter's values, counted
//! by the collection report, while a meter without one is interpolated; a meter silent over
//! midnight whose freeze is re-read (补抄) when it answers again gets it late, from the meter.
//!
//! End to end: a simulated DL/T 645-2007 meter on a real pty whose clock has just passed its
//! midnight, a real `amr-gateway run` process and a real mosquitto: the gateway's first poll
//! reads the meter's last daily freeze, and the headend gets it on `freeze/{meter}` with
//! `"source": "meter"`, the meter's midnight and the simulator's truth.
//!
//! The driver's side in detail (the freeze read back equals the simulator's truth, missed days
//! re-read after a silence, a refusal remembered) is tested in `src/bus/dlt645.rs` with the
//! time passed in; the gateway's own midnight cannot be waited for in a test, so the re-read of
//! the next day's freeze by a running daemon is tested in those parts.

mod support;

use amr_gateway::bus::BusEvent;
use amr_gateway::clock::parse_rfc3339;
use amr_gateway::config::{Config, load_str};
use amr_gateway::model::Reading;
use amr_gateway::pipeline::Writer;
use amr_gateway::store::Store;
use amr_gateway::uplink::contract::Topics;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use support::{Gateway, Mosquitto, SimRuntime, Subscriber, log_tail};

const CONFIG: &str = r#"
[gateway]
id = "gw"
data_dir = "data"
timezone = "Asia/Shanghai"

[mqtt]
host = "127.0.0.1"

[[bus]]
name = "rs485-1"
protocol = "dlt645"
device = "/dev/null"

[[meter]]
id = "s"
bus = "rs485-1"
address = "000000000001"
model = "dlt645-2007"

[[meter]]
id = "c1"
bus = "rs485-1"
address = "000000000002"
model = "dlt645-2007"

[collection]
report_at = "00:30"
"#;

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;

fn kwh(meter: &str, t: i64, t0: i64) -> f64 {
    let h = (t - t0) as f64 / HOUR as f64;
    match meter {
        "s" => 10_000.0 + 12.0 * h,
        _ => 100.0 + 5.0 * h,
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

/// The meter's own freeze as the driver emits it: total and tariffs, and the export.
fn own_freeze(meter: &str, ts_ms: i64, import: f64) -> BusEvent {
    BusEvent::MeterFreeze {
        meter: meter.into(),
        ts_ms,
        values: BTreeMap::from([
            ("energy_import_kwh".to_string(), import),
            ("energy_import_t1_kwh".to_string(), import * 0.4),
            ("energy_import_t2_kwh".to_string(), import * 0.3),
            ("energy_import_t3_kwh".to_string(), import * 0.2),
            ("energy_import_t4_kwh".to_string(), import * 0.1),
            ("energy_export_kwh".to_string(), 1.5),
        ]),
    }
}

/// Reads once a minute per meter over `[from, to)` (c1 silent where `silent` says); the
/// events `extra` gives for a minute go first (the driver reads the freezes before it
/// reports the poll's reading); a writer step after each minute, committed.
fn run(
    writer: &mut Writer,
    store: &mut Store,
    (from, to, t0): (i64, i64, i64),
    silent: impl Fn(i64) -> bool,
    extra: impl Fn(i64) -> Vec<BusEvent>,
) {
    let mut t = from;
    while t < to {
        let mut events = extra(t);
        for (i, m) in ["s", "c1"].iter().enumerate() {
            let ts = t + 5_000 + 9_000 * i as i64;
            if *m == "c1" && silent(ts) {
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
fn a_meters_own_freeze_is_the_days_freeze_and_counts_in_the_collection() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let mut store = Store::open(&config.db_path(), &config.store).unwrap();
    // Local midnights of 2026-11-23 and 2026-11-24 in Shanghai.
    let m1 = parse_rfc3339("2026-11-22T16:00:00Z").unwrap();
    let m2 = m1 + 24 * HOUR;
    let t0 = m1 - HOUR;
    let (mut writer, batch) = Writer::start(
        &config.pipeline_settings(),
        Topics::new("amr", "gw"),
        &store,
        t0,
    )
    .unwrap();
    store.commit_at(&batch, t0).unwrap();

    // The driver's first poll of s after the start reads its last freeze (of m0) at once;
    // from then on the engine knows s keeps its own freezes.
    let at =
        |when: i64, ev: fn() -> Vec<BusEvent>| move |t: i64| if t == when { ev() } else { vec![] };
    let first = || {
        vec![own_freeze(
            "s",
            parse_rfc3339("2026-11-21T16:00:00Z").unwrap(),
            9_000.0,
        )]
    };
    // s's own freeze of m1 comes at 00:05 local (the driver reads it then); c1 has none.
    let s_m1 = || {
        vec![own_freeze(
            "s",
            parse_rfc3339("2026-11-22T16:00:00Z").unwrap(),
            9_999.0,
        )]
    };
    run(
        &mut writer,
        &mut store,
        (t0, m1 + 5 * MIN, t0),
        |_| false,
        at(t0, first),
    );
    run(
        &mut writer,
        &mut store,
        (m1 + 5 * MIN, m1 + HOUR, t0),
        |_| false,
        at(m1 + 5 * MIN, s_m1),
    );

    let s = sent(&store, "amr/gw/freeze/s");
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!(s[0]["ts"], "2026-11-21T16:00:00.000Z");
    assert_eq!(s[0]["day"], "2026-11-22");
    assert_eq!(s[1]["day"], "2026-11-23");
    assert_eq!(s[1]["ts"], "2026-11-22T16:00:00.000Z");
    assert_eq!(s[1]["source"], "meter");
    assert_eq!(s[1]["late"], false);
    // The meter's values, not the reads' (which would give 10 012 kWh).
    assert_eq!(s[1]["values"]["energy_import_kwh"], 9_999.0);
    assert_eq!(s[1]["values"]["energy_export_kwh"], 1.5);
    assert!(s[1]["values"]["energy_import_t4_kwh"].as_f64().is_some());
    let c1 = sent(&store, "amr/gw/freeze/c1");
    assert_eq!(c1.len(), 1, "{c1:?}");
    assert_eq!(c1[0]["source"], "interpolated");

    // The report at 00:30 counts both.
    let c = sent(&store, "amr/gw/collection");
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0]["day"], "2026-11-23");
    assert_eq!(
        (c[0]["configured"].as_u64(), c[0]["frozen"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(c[0]["failed"], serde_json::json!([]));

    // The next midnight: c1 silent from 23:30 to 02:00; when it answers, the driver re-reads
    // its freeze of m2 (补抄) before its reading: late, from the meter.
    let silent = |ts: i64| ts >= m2 - 30 * MIN && ts < m2 + 2 * HOUR;
    let c1_m2 = || {
        vec![own_freeze(
            "c1",
            parse_rfc3339("2026-11-23T16:00:00Z").unwrap(),
            200.0,
        )]
    };
    run(
        &mut writer,
        &mut store,
        (m1 + HOUR, m2 + 2 * HOUR, t0),
        silent,
        |_| vec![],
    );
    let c = sent(&store, "amr/gw/collection");
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!(c[1]["failed"], serde_json::json!(["c1"]));
    run(
        &mut writer,
        &mut store,
        (m2 + 2 * HOUR, m2 + 3 * HOUR, t0),
        silent,
        at(m2 + 2 * HOUR, c1_m2),
    );
    let c1 = sent(&store, "amr/gw/freeze/c1");
    assert_eq!(c1.len(), 2, "{c1:?}");
    assert_eq!(c1[1]["day"], "2026-11-24");
    assert_eq!(c1[1]["source"], "meter");
    assert_eq!(c1[1]["late"], true);
    assert_eq!(c1[1]["values"]["energy_import_kwh"], 200.0);
}

const SIM: &str = r#"
[[bus]]
name = "d"
link = "ttyD"
protocol = "dlt645"
baud = 9600
parity = "none"
turnaround_ms = 20
gateway_timeout_ms = 500

[[meter]]
bus = "d"
unit = 1
address = "000000000001"
model = "dlt645-2007"
load_kw = 7.0
energy_start_kwh = 1000.0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_publishes_a_dlt645_meters_own_freeze() {
    use amr_gateway::bus::{Driver, MeterSettings, OfflinePolicy};
    use amr_gateway::sim::Fault;
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let rt = SimRuntime::new();
    let sim = rt.start(SIM, "dlt645-freeze-sim", dir.path());
    // The meter's clock (China Standard Time) two seconds before the local midnight just
    // passed: it freezes at it, as it did at real midnight.
    let now_s = amr_gateway::clock::now_ms() / 1000 + 8 * 3600;
    let offset = now_s.div_euclid(86_400) * 86_400 - 2 - now_s;
    let fault = Fault {
        clock_offset_s: offset,
        ..Fault::default()
    };
    sim.set_fault("d", 1, fault).unwrap();
    // Requests before and after its midnight (the meter notices its midnight at a request).
    {
        let bus = sim.bus_settings("d").unwrap();
        let library = amr_gateway::meter::ModelLibrary::builtin();
        let model = std::sync::Arc::new(library.get_dlt645("dlt645-2007").unwrap().clone());
        let meters = [MeterSettings::dlt645("m1", "000000000001", model)];
        let mut driver =
            amr_gateway::bus::Dlt645Driver::new(&bus, &meters, &[], &OfflinePolicy::default())
                .unwrap();
        driver.open_link().await.unwrap();
        let _ = driver.poll(0, true).await;
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        let _ = driver.poll(0, true).await;
    }
    let truth = sim.daily_freezes("d", 1).unwrap();
    assert_eq!(truth.len(), 1, "{truth:?}");

    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[gateway]
id = "gw1"
data_dir = "data"
timezone = "Asia/Shanghai"

[mqtt]
host = "127.0.0.1"
port = {}
reconnect_max_s = 2

[[bus]]
name = "d"
protocol = "dlt645"
device = "ttyD"
baud = 9600
parity = "none"
timeout_ms = 500
poll_interval_s = 1

[[meter]]
id = "m1"
bus = "d"
address = "000000000001"
model = "dlt645-2007"
multiplier = 20
"#,
            broker.port
        ),
    )
    .unwrap();
    let headend = Subscriber::start(broker.port, "headend-freeze", "amr/gw1/freeze/#").await;
    let mut gw = Gateway::start(&config, "gateway.log");
    let got = headend
        .wait_until(Duration::from_secs(120), |r| !r.is_empty())
        .await
        .unwrap_or_else(|| panic!("no freeze\n{}", log_tail(dir.path(), 30)));
    let (topic, f) = &got[0];
    assert_eq!(topic, "amr/gw1/freeze/m1");
    assert_eq!(f["source"], "meter", "{f}");
    assert_eq!(f["kind"], "day");
    let midnight = truth[0].time.to_unix(8 * 3600) * 1000;
    assert_eq!(f["ts"], amr_gateway::clock::rfc3339_ms(midnight), "{f}");
    let values = &f["values"];
    let import = values["energy_import_kwh"].as_f64().unwrap();
    assert!(
        (import - 20.0 * truth[0].import[0]).abs() <= 20.0 * 0.0051,
        "{f}"
    );
    let t4 = values["energy_import_t4_kwh"].as_f64().unwrap();
    assert!(
        (t4 - 20.0 * truth[0].import[4]).abs() <= 20.0 * 0.0051,
        "{f}"
    );
    assert!(values["energy_export_kwh"].as_f64().is_some(), "{f}");
    assert!(gw.terminate().success());
}
