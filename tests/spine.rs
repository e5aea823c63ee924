//! The spine end to end, against real parts: simulated meters on real pseudo-terminals carrying
//! real Modbus RTU frames, the gateway as a real `amr-gateway run` process, a real mosquitto,
//! and real signals (SIGKILL of the broker and of the gateway).

mod support;

use amr_gateway::meter::ModelLibrary;
use amr_gateway::sim::{self, SimConfig, SimHandle};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{Gateway, Mosquitto, Received, Subscriber, log_tail};

/// Upper bound for waiting on a slow shared machine; never a speed requirement.
const PATIENCE: Duration = Duration::from_secs(90);

/// The simulated bus: three meters of three models; the DTSU666 sits behind 200/5 A CTs.
const SIM: &str = r#"
[[bus]]
name = "rs485"
link = "ttyRS485"
baud = 19200
turnaround_ms = 5

[[meter]]
bus = "rs485"
unit = 1
model = "eastron-sdm120"
load_kw = 2.5
energy_start_kwh = 1234.5
voltage_v = 229.0

[[meter]]
bus = "rs485"
unit = 2
model = "eastron-sdm630"
load_kw = 7.2
energy_start_kwh = 20500.0

[[meter]]
bus = "rs485"
unit = 3
model = "chint-dtsu666"
load_kw = 1.5
energy_start_kwh = 300.0
power_factor = 0.9
"#;

/// (meter id, unit, multiplier)
const METERS: &[(&str, u8, f64)] = &[("m1", 1, 1.0), ("m2", 2, 1.0), ("supply", 3, 40.0)];

fn gateway_config(dir: &Path, mqtt_port: u16) -> PathBuf {
    let mut text = format!(
        r#"
[gateway]
id = "gw1"
data_dir = "data"

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
reconnect_max_s = 2

[[bus]]
name = "rs485"
protocol = "modbus-rtu"
device = "ttyRS485"
baud = 19200
timeout_ms = 300
poll_interval_s = 1
"#
    );
    let models = ["eastron-sdm120", "eastron-sdm630", "chint-dtsu666"];
    for ((id, unit, mult), model) in METERS.iter().zip(models) {
        text += &format!(
            "\n[[meter]]\nid = \"{id}\"\nbus = \"rs485\"\nunit = {unit}\nmodel = \"{model}\"\nmultiplier = {mult}\n"
        );
    }
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start_sim(dir: &Path) -> SimHandle {
    let cfg = SimConfig::parse(SIM, "spine-sim", dir).expect("sim config");
    sim::start(cfg, &ModelLibrary::builtin()).expect("sim start")
}

fn readings(received: &[Received]) -> Vec<&serde_json::Value> {
    received
        .iter()
        .filter(|(t, _)| t.contains("/reading/"))
        .map(|(_, j)| j)
        .collect()
}

/// Every seq from the first to the last received, none missing (duplicates allowed).
fn assert_no_gap(received: &[Received]) -> (u64, u64) {
    let seqs: BTreeSet<u64> = received
        .iter()
        .filter_map(|(_, j)| j.get("seq").and_then(|s| s.as_u64()))
        .collect();
    let first = *seqs.first().expect("no sequenced message received");
    let last = *seqs.last().unwrap();
    let missing: Vec<u64> = (first..=last).filter(|s| !seqs.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "seq gaps: {missing:?} (first {first}, last {last})"
    );
    (first, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_reach_the_headend_with_the_simulators_values_in_seq_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let sim = start_sim(dir.path());
    let headend = Subscriber::start(broker.port, "headend-1", "amr/gw1/#").await;
    let config = gateway_config(dir.path(), broker.port);
    let mut gw = Gateway::start(&config, "gateway.log");

    let got = headend
        .wait_until(PATIENCE, |r| {
            METERS
                .iter()
                .all(|(id, _, _)| readings(r).iter().filter(|j| j["meter"] == *id).count() >= 5)
        })
        .await
        .unwrap_or_else(|| panic!("not enough readings\n{}", log_tail(dir.path(), 30)));

    // Sequence: every sequenced message in arrival order, +1 each, starting at 1.
    let seqs: Vec<u64> = got
        .iter()
        .filter_map(|(_, j)| j.get("seq").and_then(|s| s.as_u64()))
        .collect();
    assert_eq!(seqs[0], 1, "a fresh gateway starts at seq 1");
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "seq out of order or missing: {seqs:?}");
    }

    // Values: what the simulator serves, primary side (a multiplier alone is a low-voltage
    // meter's CT ratio: × it for currents, energy and power; voltages as they are).
    for r in readings(&got) {
        let id = r["meter"].as_str().unwrap();
        let (_, unit, mult) = METERS.iter().find(|(m, _, _)| *m == id).unwrap();
        assert!(r["ts"].as_str().unwrap().ends_with('Z'), "{r}");
        let values = r["values"].as_object().unwrap();
        for (q, scale) in [
            ("voltage_l1_v", 1.0),
            ("current_l1_a", *mult),
            ("frequency_hz", 1.0),
        ] {
            let got = values[q].as_f64().unwrap();
            let want = sim.value_now("rs485", *unit, q).unwrap() * scale;
            assert!(
                (got - want).abs() < 0.01 * scale,
                "{id} {q}: gateway {got}, simulator {want}"
            );
        }
        let p = values["power_kw"].as_f64().unwrap();
        let want_p = sim.value_now("rs485", *unit, "power_kw").unwrap() * mult;
        assert!(
            (p - want_p).abs() < 0.01 * mult,
            "{id} power: {p} vs {want_p}"
        );
        let e = values["energy_import_kwh"].as_f64().unwrap();
        let now_e = sim.value_now("rs485", *unit, "energy_import_kwh").unwrap() * mult;
        let start_e = match *unit {
            1 => 1234.5,
            2 => 20500.0,
            _ => 300.0,
        } * mult;
        assert!(
            e >= start_e - 0.01 * mult && e <= now_e + 0.01 * mult,
            "{id} energy {e} outside [{start_e}, {now_e}]"
        );
    }
    // Meter state is retained and says online, with the ratios its readings were scaled by.
    assert!(
        got.iter()
            .any(|(t, j)| t == "amr/gw1/meter/supply/state" && j["state"] == "online"),
        "no online meter state"
    );
    let state = &got
        .iter()
        .find(|(t, _)| t == "amr/gw1/meter/supply/state")
        .unwrap()
        .1;
    assert_eq!(
        (&state["multiplier"], &state["ct_ratio"], &state["pt_ratio"]),
        (&json!(40.0), &json!(40.0), &json!(1.0)),
        "{state}"
    );
    assert!(
        gw.terminate().success(),
        "SIGTERM should end the gateway cleanly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start_persistent();
    let _sim = start_sim(dir.path());
    let headend = Subscriber::start(broker.port, "headend-2", "amr/gw1/#").await;
    let config = gateway_config(dir.path(), broker.port);
    let _gw = Gateway::start(&config, "gateway.log");

    headend
        .wait_until(PATIENCE, |r| readings(r).len() >= 6)
        .await
        .unwrap_or_else(|| {
            panic!(
                "no readings before the outage\n{}",
                log_tail(dir.path(), 30)
            )
        });
    let saved = std::time::SystemTime::now();
    broker.wait_saved(saved);
    broker.kill();
    let killed_at = amr_gateway::clock::now_ms();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let restarted_at = amr_gateway::clock::now_ms();
    broker.restart();

    // Readings taken while the broker was dead arrive, and polling went on meanwhile.
    let got = headend
        .wait_until(PATIENCE, |r| {
            readings(r).iter().any(|j| {
                amr_gateway::clock::parse_rfc3339(j["ts"].as_str().unwrap_or(""))
                    .is_some_and(|ts| ts > restarted_at + 2000)
            })
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no readings after the restart\n{}",
                log_tail(dir.path(), 30)
            )
        });
    assert_no_gap(&got);
    let during = readings(&got)
        .iter()
        .filter(|j| {
            amr_gateway::clock::parse_rfc3339(j["ts"].as_str().unwrap())
                .is_some_and(|ts| ts > killed_at + 500 && ts < restarted_at)
        })
        .count();
    assert!(
        during >= 6,
        "only {during} readings from the outage reached the headend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_while_publishing_and_restarted_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The broker starts late, so a backlog builds up and the gateway is killed in the middle of
    // sending it.
    let port = support::free_port();
    let _sim = start_sim(dir.path());
    let config = gateway_config(dir.path(), port);
    let mut gw = Gateway::start(&config, "gateway-1.log");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let broker = Mosquitto::start_on(port);
    let headend = Subscriber::start(broker.port, "headend-3", "amr/gw1/#").await;
    headend
        .wait_until(PATIENCE, |r| !readings(r).is_empty())
        .await
        .unwrap_or_else(|| panic!("nothing published\n{}", log_tail(dir.path(), 30)));
    gw.kill();
    let killed_at = amr_gateway::clock::now_ms();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _gw2 = Gateway::start(&config, "gateway-2.log");

    let got = headend
        .wait_until(PATIENCE, |r| {
            readings(r).iter().any(|j| {
                amr_gateway::clock::parse_rfc3339(j["ts"].as_str().unwrap_or(""))
                    .is_some_and(|ts| ts > killed_at + 4000)
            })
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no readings after the restart\n{}",
                log_tail(dir.path(), 30)
            )
        });
    let (first, last) = assert_no_gap(&got);
    assert_eq!(first, 1);
    assert!(last > 10, "too few messages to mean anything: {last}");
    // Status went offline by the last will when the gateway was killed, and online again.
    let states: Vec<&str> = got
        .iter()
        .filter(|(t, _)| t == "amr/gw1/status")
        .filter_map(|(_, j)| j["state"].as_str())
        .collect();
    assert!(
        states.contains(&"offline") && states.last() == Some(&"online"),
        "status: {states:?}"
    );
    // The last will says it is one, and names no (misleading) time.
    let will = got
        .iter()
        .find(|(t, j)| t == "amr/gw1/status" && j["state"] == "offline")
        .map(|(_, j)| j)
        .unwrap();
    assert_eq!(
        (&will["last_will"], &will["ts"]),
        (&json!(true), &json!(null)),
        "{will}"
    );
}
