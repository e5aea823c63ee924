//! Remote control of a DL/T 645 meter's relay (费控) end to end, against real parts: simulated
//! DL/T 645-2007 meters on a real pseudo-terminal, the gateway as a real `amr-gateway run`
//! process with a relay secrets file, a real mosquitto, and the headend's `amr-gateway command`
//! as a process.
//!
//! - `relay --arg meter=h1 --arg action=trip` is `done` with the meter's reply `ok` and
//!   `relay: open` read back from status word 3; the simulated meter's relay is open;
//! - keep-power on, then a trip: `failed`, the meter's refusal in words, the relay still
//!   closed;
//! - a meter whose password differs from the secrets file: `failed`, "password error";
//! - a meter with no entry in the secrets file: `failed`, naming what to add.
//!
//! The codec's frames and the driver against the simulator are unit-tested
//! (`protocol::dlt645::codec`, `bus::dlt645`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;
use support::{Gateway, Mosquitto, SimRuntime, Subscriber, log_tail};

/// Upper bound for waiting on a slow shared machine; never a speed requirement.
const PATIENCE: Duration = Duration::from_secs(120);

/// (meter id, simulator unit, address, the meter's relay password in the simulator)
const METERS: &[(&str, u8, &str, &str)] = &[
    ("h1", 1, "000000000001", ""),
    ("h2", 2, "000000000002", ""),
    ("h3", 3, "000000000003", "02654321"),
    ("h4", 4, "000000000004", ""),
];

fn sim_text() -> String {
    let mut text = "[[bus]]\nname = \"d\"\nlink = \"ttyR\"\nprotocol = \"dlt645\"\nbaud = 9600\n\
                    parity = \"none\"\nturnaround_ms = 20\ngateway_timeout_ms = 500\n"
        .to_string();
    for (_, unit, address, password) in METERS {
        text += &format!(
            "\n[[meter]]\nbus = \"d\"\nunit = {unit}\naddress = \"{address}\"\n\
             model = \"dlt645-2007\"\nload_kw = 1.0\nenergy_start_kwh = 100.0\n\
             fault = {{ relay_password = \"{password}\" }}\n"
        );
    }
    text
}

fn gateway_config(dir: &Path, mqtt_port: u16) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    // h1..h3 have their secrets (h3's password is not the one its meter holds); h4 has none.
    let secrets = dir.join("relay-secrets.toml");
    let mut s = String::new();
    for id in ["h1", "h2", "h3"] {
        s += &format!("[meter.{id}]\npassword = \"02123456\"\noperator = \"55667788\"\n\n");
    }
    std::fs::write(&secrets, s).unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
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
at = "off"

[commands]
relay_secrets_file = "relay-secrets.toml"

[[command_key]]
id = "ops"
public_key_file = "ops.key.pub"
allow = ["relay"]

[[bus]]
name = "d"
protocol = "dlt645"
device = "ttyR"
baud = 9600
parity = "none"
timeout_ms = 500
poll_interval_s = 5
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

/// `amr-gateway command ... relay --arg meter=M --arg action=A [--json]` as a process.
async fn relay(port: u16, dir: &Path, meter: &str, action: &str, json: bool) -> Output {
    let dir = dir.to_path_buf();
    let (meter, action) = (format!("meter={meter}"), format!("action={action}"));
    tokio::task::spawn_blocking(move || {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_amr-gateway"));
        c.args([
            "command",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .args(["--gateway", "gw1", "--key"])
        .arg(dir.join("ops.key"))
        .args(["--key-id", "ops", "--timeout-s", "90"]);
        if json {
            c.arg("--json");
        }
        c.args(["relay", "--arg", &meter, "--arg", &action])
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn result_of(out: &Output, dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "no JSON result: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            log_tail(dir, 40)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_headend_trips_a_meter_and_keep_power_and_passwords_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let rt = SimRuntime::new();
    let sim = rt.start(&sim_text(), "dlt645-relay-sim", dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_amr-gateway"))
        .args(["keygen", "--out"])
        .arg(dir.path().join("ops.key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let config = gateway_config(dir.path(), broker.port);
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_amr-gateway"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let headend = Subscriber::start(broker.port, "headend-relay", "amr/gw1/#").await;
    let _gw = Gateway::start(&config, "gateway.log");
    headend
        .wait_until(PATIENCE, |r| {
            r.iter().any(|(t, _)| t.starts_with("amr/gw1/meter/h1/"))
        })
        .await
        .unwrap_or_else(|| panic!("gateway not up\n{}", log_tail(dir.path(), 40)));
    let port = broker.port;

    // Trip h1: done, the meter said ok, status word 3 shows the relay open.
    let out = relay(port, dir.path(), "h1", "trip", true).await;
    let r = result_of(&out, dir.path());
    assert_eq!(r["state"], "done", "{r}");
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert_eq!(r["data"]["meter"], "h1", "{r}");
    assert_eq!(r["data"]["action"], "trip", "{r}");
    assert_eq!(r["data"]["reply"], "ok", "{r}");
    assert_eq!(r["data"]["relay"], "open", "{r}");
    assert!(sim.relay_state("d", 1).unwrap().open);

    // Close it again, as the operator reads it (not JSON).
    let out = relay(port, dir.path(), "h1", "close", false).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("relay done"), "{text}");
    assert!(text.contains("\"relay\": \"closed\""), "{text}");
    assert!(!sim.relay_state("d", 1).unwrap().open);

    // Keep power on h2, then a trip: refused by the meter, the relay stays closed.
    let r = result_of(
        &relay(port, dir.path(), "h2", "keep_power", true).await,
        dir.path(),
    );
    assert_eq!(r["state"], "done", "{r}");
    assert_eq!(r["data"]["keep_power"], true, "{r}");
    let out = relay(port, dir.path(), "h2", "trip", true).await;
    let r = result_of(&out, dir.path());
    assert_eq!(r["state"], "failed", "{r}");
    assert_ne!(out.status.code(), Some(0));
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("meter `h2` refused relay trip"), "{reason}");
    assert!(reason.contains("relay: closed, keep_power on"), "{reason}");
    assert!(!sim.relay_state("d", 2).unwrap().open);

    // h3's meter holds another password: refused, in words.
    let r = result_of(
        &relay(port, dir.path(), "h3", "trip", true).await,
        dir.path(),
    );
    assert_eq!(r["state"], "failed", "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("password error / unauthorised"), "{reason}");
    assert!(!sim.relay_state("d", 3).unwrap().open);

    // h4 has no secrets: nothing is sent, the reason says what to add.
    let r = result_of(
        &relay(port, dir.path(), "h4", "trip", true).await,
        dir.path(),
    );
    assert_eq!(r["state"], "failed", "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("no relay secrets for meter `h4`"),
        "{reason}"
    );
    assert!(reason.contains("[meter.h4]"), "{reason}");
    assert!(!sim.relay_state("d", 4).unwrap().open);

    // The secrets never reach the log.
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default();
    assert!(
        !log.contains("02123456") && !log.contains("55667788"),
        "{log}"
    );
}
