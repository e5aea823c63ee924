//! A lost device is a lost meter, against real parts: a real `amr-gateway run` reads two
//! simulated meters on a real pseudo-terminal; the simulator is stopped (its pty closes and its
//! link disappears, as when a USB serial adapter is unplugged), then started again at the same
//! path. The meters' retained state says offline, naming the device, `area_outage` is raised for
//! the bus; when the device returns the meters come back online and are read again.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{Mosquitto, Received, SimRuntime, Subscriber};

/// Upper bound for waiting on a slow shared machine; never a speed requirement.
const PATIENCE: Duration = Duration::from_secs(90);

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

[[meter]]
bus = "rs485"
unit = 2
model = "eastron-sdm120"
"#;

fn write_config(dir: &Path, port: u16) -> PathBuf {
    let text = format!(
        r#"
[gateway]
id = "gw1"
data_dir = "data"

[mqtt]
host = "127.0.0.1"
port = {port}

[alarms.outage]
clear_after_s = 1

[[bus]]
name = "rs485"
protocol = "modbus-rtu"
device = "ttyRS485"
baud = 19200
timeout_ms = 300
poll_interval_s = 1

[[meter]]
id = "m1"
bus = "rs485"
unit = 1
model = "eastron-sdm120"

[[meter]]
id = "m2"
bus = "rs485"
unit = 2
model = "eastron-sdm120"
"#
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The last retained state of `meter` received at or after index `from`.
fn last_state(received: &[Received], from: usize, meter: &str) -> Option<serde_json::Value> {
    let topic = format!("amr/gw1/meter/{meter}/state");
    received[from.min(received.len())..]
        .iter()
        .rev()
        .find(|(t, _)| *t == topic)
        .map(|(_, j)| j.clone())
}

fn outage(received: &[Received], from: usize, state: &str) -> bool {
    received[from.min(received.len())..]
        .iter()
        .any(|(t, j)| t == "amr/gw1/alarm/area_outage/rs485" && j["state"] == state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_device_takes_its_meters_offline_with_an_alarm_and_they_return_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let sub = Subscriber::start(broker.port, "check-device", "amr/gw1/#").await;
    let sims = SimRuntime::new();
    let sim = sims.start(SIM, "sim.toml", dir.path());
    let config = write_config(dir.path(), broker.port);
    let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_amr-gateway"))
        .args(["run", "--config"])
        .arg(&config)
        .env("AMR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let tail = || support::log_tail(dir.path(), 40);

    // Both meters read.
    let online = |r: &[Received], from: usize| {
        ["m1", "m2"].iter().all(|m| {
            last_state(r, from, m).is_some_and(|s| s["state"] == "online")
                && r[from.min(r.len())..]
                    .iter()
                    .any(|(t, _)| *t == format!("amr/gw1/reading/{m}"))
        })
    };
    assert!(
        sub.wait_until(PATIENCE, |r| online(r, 0)).await.is_some(),
        "meters not online\n{}",
        tail()
    );

    // The device vanishes: the simulator stops, its pty closes and its link is removed.
    let mark = sub.received().len();
    drop(sim);
    assert!(!dir.path().join("ttyRS485").exists(), "the link is gone");
    let offline = sub
        .wait_until(PATIENCE, |r| {
            ["m1", "m2"].iter().all(|m| {
                last_state(r, mark, m).is_some_and(|s| {
                    s["state"] == "offline"
                        && s["last_error"]
                            .as_str()
                            .is_some_and(|e| e.contains("ttyRS485"))
                })
            }) && outage(r, mark, "raised")
        })
        .await;
    assert!(
        offline.is_some(),
        "meters not offline with an alarm: {:?}\n{}",
        ["m1", "m2"].map(|m| last_state(&sub.received(), mark, m)),
        tail()
    );
    assert!(gateway.try_wait().unwrap().is_none(), "the gateway runs on");

    // The device returns at the same path: the meters come back and are read again.
    let mark = sub.received().len();
    let _sim = sims.start(SIM, "sim.toml", dir.path());
    let back = sub
        .wait_until(PATIENCE, |r| online(r, mark) && outage(r, mark, "cleared"))
        .await;
    assert!(back.is_some(), "meters not back online\n{}", tail());
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap();
    assert!(log.contains("bus open again"), "{log}");
    // One warning for the lost device, not one per attempt.
    assert_eq!(log.matches("cannot open bus").count(), 1, "{log}");
    let _ = gateway.kill();
    let _ = gateway.wait();
}
