//! DL/T 645 meter clocks and the meters' own alarms, end to end against real parts: simulated
//! DL/T 645-2007 meters on a real pseudo-terminal, the gateway as a real `amr-gateway run`
//! process, a real mosquitto and a headend subscriber.
//!
//! - the daily broadcast time sync (08H) goes out: a meter 2 minutes off takes it (its skew in
//!   the retained meter state goes to about 0); a meter 10 minutes off refuses it, as meters
//!   do beyond ±5 minutes, and is named in a `clock_skew` alarm that says to set it on site;
//! - a meter-cover-open count that goes up raises one `meter_cover_open` event (ERC 37), and a
//!   battery bit of status word 1 raises `meter_battery_low` (ERC 33).
//!
//! The schedule itself (never near midnight, never with an unsynchronised clock, once a day)
//! is tested with the clock passed in: `bus::time_sync`'s unit tests.

mod support;

use amr_gateway::clock::{LocalTime, now_ms};
use amr_gateway::sim::Fault;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{Gateway, Mosquitto, Received, SimRuntime, Subscriber, log_tail};

/// Upper bound for waiting on a slow shared machine; never a speed requirement.
const PATIENCE: Duration = Duration::from_secs(120);

/// (meter id, simulator unit, address, clock offset s)
const METERS: &[(&str, u8, &str, i64)] = &[
    ("k1", 1, "000000000001", 120),
    ("k2", 2, "000000000002", 600),
    ("k3", 3, "000000000003", 0),
];

fn sim_text() -> String {
    let mut text = "[[bus]]\nname = \"d\"\nlink = \"ttyK\"\nprotocol = \"dlt645\"\nbaud = 9600\n\
                    parity = \"none\"\nturnaround_ms = 20\ngateway_timeout_ms = 500\n"
        .to_string();
    for (_, unit, address, offset) in METERS {
        text += &format!(
            "\n[[meter]]\nbus = \"d\"\nunit = {unit}\naddress = \"{address}\"\n\
             model = \"dlt645-2007\"\nload_kw = 1.0\nenergy_start_kwh = 100.0\n\
             fault = {{ clock_offset_s = {offset}, cover_open_count = 3, power_down_count = 7 }}\n"
        );
    }
    text
}

fn gateway_config(dir: &Path, mqtt_port: u16) -> PathBuf {
    let mut text = format!(
        r#"
[gateway]
id = "gw1"
data_dir = "data"
timezone = "Asia/Shanghai"

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
reconnect_max_s = 2

[time_sync]
at = "00:06"
gateway_clock = "trusted"
read_interval_s = 10

[[bus]]
name = "d"
protocol = "dlt645"
device = "ttyK"
baud = 9600
parity = "none"
timeout_ms = 500
poll_interval_s = 1
"#
    );
    for (id, _, address, _) in METERS {
        text += &format!(
            "\n[[meter]]\nid = \"{id}\"\nbus = \"d\"\naddress = \"{address}\"\n\
             model = \"dlt645-2007\"\n"
        );
    }
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The last retained state of `meter` that carries a clock skew.
fn skew(received: &[Received], meter: &str) -> Option<f64> {
    received
        .iter()
        .rev()
        .filter(|(t, _)| t == &format!("amr/gw1/meter/{meter}/state"))
        .find_map(|(_, j)| j["clock_skew_s"].as_f64())
}

fn alarms<'a>(received: &'a [Received], kind: &str, meter: &str) -> Vec<&'a serde_json::Value> {
    received
        .iter()
        .filter(|(t, j)| t == &format!("amr/gw1/alarm/{kind}/{meter}") && j["state"] == "raised")
        .map(|(_, j)| j)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_sync_corrects_small_skews_and_meters_report_their_own_events() {
    // The schedule refuses a sync within five minutes of midnight (and 00:06 is the time of
    // this test's sync): a run at that hour would wait a day.
    let zone = LocalTime::named("Asia/Shanghai").unwrap();
    let since_midnight_min = zone.since_midnight_ms(now_ms()) / 60_000;
    if !(8..=1430).contains(&since_midnight_min) {
        eprintln!("skipped: within minutes of midnight in Asia/Shanghai, when no sync is sent");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let rt = SimRuntime::new();
    let sim = rt.start(&sim_text(), "dlt645-clock-sim", dir.path());
    let headend = Subscriber::start(broker.port, "headend-clock", "amr/gw1/#").await;
    let config = gateway_config(dir.path(), broker.port);
    let _gw = Gateway::start(&config, "gateway.log");

    let got = headend
        .wait_until(PATIENCE, |r| {
            skew(r, "k1").is_some_and(|s| s.abs() <= 2.0)
                && skew(r, "k3").is_some()
                && !alarms(r, "clock_skew", "k2").is_empty()
        })
        .await
        .unwrap_or_else(|| panic!("no synced clock / no alarm\n{}", log_tail(dir.path(), 40)));

    // k1 took the sync: the simulated meter's clock is right again.
    assert!(sim.clock_offset_s("d", 1).unwrap().abs() <= 2.0);
    // k2, 10 minutes off, refused it and is named in the alarm.
    assert!((sim.clock_offset_s("d", 2).unwrap() - 600.0).abs() < 1.0);
    let k2 = skew(&got, "k2").unwrap();
    assert!((k2 - 600.0).abs() <= 2.0, "k2 skew {k2}");
    let alarm = alarms(&got, "clock_skew", "k2")[0];
    assert_eq!(alarm["threshold"], 300.0, "{alarm}");
    assert_eq!(alarm["correctable"], false, "{alarm}");
    assert!(
        alarm["action"]
            .as_str()
            .unwrap()
            .contains("broadcast time sync cannot correct it; set the clock on site"),
        "{alarm}"
    );
    assert_eq!(alarm["erc"], 12, "{alarm}");
    assert!(alarms(&got, "clock_skew", "k1").is_empty());
    assert!(alarms(&got, "clock_skew", "k3").is_empty());
    // The meter state names the meter by its address.
    let state = got
        .iter()
        .rev()
        .find(|(t, _)| t == "amr/gw1/meter/k3/state")
        .map(|(_, j)| j.clone())
        .unwrap();
    assert_eq!(state["address"], "000000000003", "{state}");
    assert_eq!(state["cover_open_count"], 3, "{state}");
    assert!(alarms(&got, "meter_cover_open", "k3").is_empty());

    // Someone opens k3's cover, and its clock battery runs low.
    let fault = Fault {
        cover_open_count: 4,
        power_down_count: 7,
        status_word_1: 1 << 2,
        ..Fault::default()
    };
    sim.set_fault("d", 3, fault).unwrap();
    let got = headend
        .wait_until(PATIENCE, |r| {
            !alarms(r, "meter_cover_open", "k3").is_empty()
                && !alarms(r, "meter_battery_low", "k3").is_empty()
        })
        .await
        .unwrap_or_else(|| panic!("no meter alarms\n{}", log_tail(dir.path(), 40)));
    let open = alarms(&got, "meter_cover_open", "k3")[0];
    assert_eq!(open["previous_count"], 3, "{open}");
    assert_eq!(open["count"], 4, "{open}");
    assert_eq!(open["erc"], 37, "{open}");
    let battery = alarms(&got, "meter_battery_low", "k3")[0];
    assert_eq!(battery["clock_battery_low"], true, "{battery}");
    assert_eq!(battery["erc"], 33, "{battery}");
    // Two more reads of k3's items (every 10 s): still one cover-open event, no power-down.
    let reads_before = got
        .iter()
        .filter(|(t, _)| t == "amr/gw1/meter/k3/state")
        .count();
    headend
        .wait_until(PATIENCE, |r| {
            r.iter()
                .filter(|(t, _)| t == "amr/gw1/meter/k3/state")
                .count()
                >= reads_before + 2
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(11)).await;
    let got = headend.received();
    assert_eq!(alarms(&got, "meter_cover_open", "k3").len(), 1);
    assert!(alarms(&got, "meter_power_down", "k3").is_empty());
}

/// `amr-gateway command ... time_sync --json` as a process, with key `ops`.
fn time_sync_command(port: u16, dir: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_amr-gateway"))
        .args([
            "command",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .args(["--gateway", "gw1", "--key"])
        .arg(dir.join("ops.key"))
        .args([
            "--key-id",
            "ops",
            "--json",
            "--timeout-s",
            "90",
            "time_sync",
        ])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_headend_time_sync_command_reports_each_skew_before_and_after() {
    let zone = LocalTime::named("Asia/Shanghai").unwrap();
    let since_midnight_min = zone.since_midnight_ms(now_ms()) / 60_000;
    if !(8..=1430).contains(&since_midnight_min) {
        eprintln!("skipped: within minutes of midnight in Asia/Shanghai, when no sync is sent");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let rt = SimRuntime::new();
    let _sim = rt.start(&sim_text(), "dlt645-command-sim", dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_amr-gateway"))
        .args(["keygen", "--out"])
        .arg(dir.path().join("ops.key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // No daily sync: only the command sends one.
    let config = gateway_config(dir.path(), broker.port);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("at = \"00:06\"", "at = \"off\"")
        + "\n[[command_key]]\nid = \"ops\"\npublic_key_file = \"ops.key.pub\"\nallow = [\"time_sync\"]\n";
    std::fs::write(&config, text).unwrap();
    let headend = Subscriber::start(broker.port, "headend-sync", "amr/gw1/#").await;
    let _gw = Gateway::start(&config, "gateway.log");
    // Every meter's clock read once before the sync.
    headend
        .wait_until(PATIENCE, |r| METERS.iter().all(|m| skew(r, m.0).is_some()))
        .await
        .unwrap_or_else(|| panic!("clocks not read\n{}", log_tail(dir.path(), 40)));

    let port = broker.port;
    let p = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || time_sync_command(port, &p))
        .await
        .unwrap();
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "no JSON result: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            log_tail(dir.path(), 40)
        )
    });
    assert_eq!(result["state"], "done", "{result}");
    let meters = result["data"]["meters"].as_array().unwrap();
    assert_eq!(meters.len(), METERS.len(), "{result}");
    for (id, _, _, offset) in METERS {
        let m = meters.iter().find(|m| m["meter"] == *id).unwrap();
        let before = m["skew_before_s"].as_f64().unwrap();
        let after = m["skew_after_s"].as_f64().unwrap();
        assert!((before - *offset as f64).abs() <= 2.0, "{id}: {m}");
        // Within five minutes: set right; beyond: refused by the meter, still off.
        let want = if *offset <= 300 { 0.0 } else { *offset as f64 };
        assert!((after - want).abs() <= 2.0, "{id}: {m}");
        assert!(m["error"].is_null(), "{id}: {m}");
    }
}
