//! Signed commands end to end, against real parts: a real mosquitto, a real `amr-gateway run`
//! reading a simulated meter on a pseudo-terminal, and the headend's own tools
//! (`amr-gateway keygen`, `amr-gateway command`) as processes.
//!
//! - `ping`, `status`, `config_get` and `read` (the meter's values in the result) are done;
//!   `relay` without a relay secrets file fails and says what to configure (the relay itself:
//!   tests/dlt645_relay.rs).
//! - Each rejection reason: bad signature (a key the gateway does not hold, under a known id),
//!   unknown key, not allowed for the key, expired (and too long), replayed — also after a
//!   gateway restart — each a `rejected` result and an audit record, nothing executed.
//! - `recall` by seq closes a subscriber's gap with the original `seq`; by time (`from`/`to`,
//!   `meters`, `kinds`) it re-publishes the readings of the range, counted per kind; each
//!   kind counts its own `kind_seq` with no gap; rejections are counted by reason in `status`.
//! - `config_apply`: a mistake refused (FILE:LINE:COL, nothing changed), a file that cannot
//!   start rolled back (`failed`), a good one applied after a restart (`done`, new meter read).
//! - A flood of commands does not stop the polling.

mod support;

use amr_gateway::uplink::command::{body, read_signing_key, sign};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use support::{Gateway, Mosquitto, SimRuntime, Subscriber, log_tail, seqs_on};

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
load_kw = 2.5
energy_start_kwh = 1234.5
"#;

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_amr-gateway")
}

/// Key pairs `ops` (may ping, status, read, config_get, recall, relay) and `billing` (may
/// only read), and `rogue` (never given to the gateway).
fn keygen(dir: &Path) {
    for name in ["ops", "billing", "rogue"] {
        let out = Command::new(exe())
            .args(["keygen", "--out"])
            .arg(dir.join(format!("{name}.key")))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

fn gateway_config(dir: &Path, port: u16) -> PathBuf {
    let text = config_text(port, "data", "");
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The gateway's configuration: its data directory and more meters.
fn config_text(port: u16, data_dir: &str, more: &str) -> String {
    format!(
        r#"
[gateway]
id = "gw1"
data_dir = "{data_dir}"

[mqtt]
host = "127.0.0.1"
port = {port}

[[bus]]
name = "rs485"
protocol = "modbus-rtu"
device = "ttyRS485"
baud = 19200
timeout_ms = 300
poll_interval_s = 5

[[meter]]
id = "m1"
bus = "rs485"
unit = 1
model = "eastron-sdm120"

[[command_key]]
id = "ops"
public_key_file = "ops.key.pub"
allow = ["ping", "status", "read", "config_get", "recall", "relay", "config_apply"]

[[command_key]]
id = "billing"
public_key_file = "billing.key.pub"
allow = ["read"]

[commands]
per_key_per_minute = 1000
{more}"#
    )
}

/// `amr-gateway command ... NAME --arg ... --json` as a process.
fn command(port: u16, dir: &Path, key: &str, key_id: &str, name: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(exe());
    cmd.args([
        "command",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
    ])
    .args(["--gateway", "gw1", "--key"])
    .arg(dir.join(format!("{key}.key")))
    .args(["--key-id", key_id, "--json", "--timeout-s", "60", name]);
    for a in args {
        cmd.args(["--arg", a]);
    }
    cmd.output().unwrap()
}

fn result_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "no JSON result: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Publishes a raw envelope on the command topic (QoS 1).
async fn publish_raw(port: u16, payload: Vec<u8>) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let options = MqttOptions::new(format!("raw-{}", payload.len()), "127.0.0.1", port);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client
        .publish("amr/gw1/command", QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    loop {
        match eventloop.poll().await.unwrap() {
            Event::Incoming(Packet::PubAck(_)) => break,
            _ => continue,
        }
    }
    let _ = client.disconnect().await;
}

/// A signed envelope of `name` for gw1, issued `issued_offset_s` from now.
fn envelope(
    dir: &Path,
    key: &str,
    id: &str,
    name: &str,
    issued_offset_s: i64,
    valid_s: u64,
) -> Vec<u8> {
    let k = read_signing_key(&dir.join(format!("{key}.key"))).unwrap();
    let now = amr_gateway::clock::now_ms() + issued_offset_s * 1000;
    let b = body(id, "gw1", name, BTreeMap::new(), now, valid_s);
    serde_json::to_vec(&sign(&k, key, &b)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_end_to_end_rejections_replay_recall_and_flood() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let sims = SimRuntime::new();
    let _sim = sims.start(SIM, "commands-sim", dir.path());
    keygen(dir.path());
    let config = gateway_config(dir.path(), broker.port);
    let headend = Subscriber::start(broker.port, "headend-cmd", "amr/gw1/#").await;
    let mut gw = Gateway::start(&config, "gateway.log");
    let port = broker.port;
    let p = dir.path().to_path_buf();
    let run = |key: &'static str,
               key_id: &'static str,
               name: &'static str,
               args: &'static [&'static str]| {
        let p = p.clone();
        tokio::task::spawn_blocking(move || command(port, &p, key, key_id, name, args))
    };
    // The gateway is up and reading.
    headend
        .wait_until(PATIENCE, |r| !seqs_on(r, "/reading/m1").is_empty())
        .await
        .unwrap_or_else(|| panic!("no reading\n{}", log_tail(dir.path(), 30)));

    // ping
    let out = run("ops", "ops", "ping", &[]).await.unwrap();
    let ping = result_of(&out);
    assert!(out.status.success(), "{ping}\n{}", log_tail(dir.path(), 30));
    assert_eq!(ping["state"], "done");
    assert_eq!(ping["data"]["pong"], true);
    assert!(ping["seq"].as_u64().is_some());

    // status: the status --json document
    let out = run("ops", "ops", "status", &[]).await.unwrap();
    let status = result_of(&out);
    assert!(out.status.success(), "{status}");
    assert_eq!(status["data"]["buses"][0]["meters"][0]["meter"], "m1");

    // config_get
    let out = run("ops", "ops", "config_get", &[]).await.unwrap();
    let cfg = result_of(&out);
    assert!(out.status.success(), "{cfg}");
    assert!(
        cfg["data"]["toml"]
            .as_str()
            .unwrap()
            .contains("[[command_key]]")
    );

    // read: now, with the meter's values; by a key allowed only to read
    let out = run("billing", "billing", "read", &["meters=m1"])
        .await
        .unwrap();
    let read = result_of(&out);
    assert!(out.status.success(), "{read}\n{}", log_tail(dir.path(), 30));
    let m1 = &read["data"]["meters"][0];
    assert_eq!(m1["meter"], "m1");
    assert!(
        m1["values"]["energy_import_kwh"].as_f64().unwrap() >= 1234.5,
        "{read}"
    );
    // unknown meter: failed
    let out = run("ops", "ops", "read", &["meters=nope"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(result_of(&out)["state"], "failed");

    // relay: m1 is a Modbus meter (refused before any secrets are looked up)
    let out = run("ops", "ops", "relay", &["meter=m1", "action=trip"])
        .await
        .unwrap();
    let relay = result_of(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        relay["reason"]
            .as_str()
            .unwrap()
            .contains("relay control needs a DL/T 645 meter"),
        "{relay}"
    );

    // Rejections, each with its reason.
    let reject = |out: &Output, reason: &str| {
        let r = result_of(out);
        assert_eq!(out.status.code(), Some(1), "{r}");
        assert_eq!(r["state"], "rejected", "{r}");
        assert!(r["reason"].as_str().unwrap().contains(reason), "{r}");
    };
    // signed by a key the gateway does not hold, under a known id
    reject(
        &run("rogue", "ops", "ping", &[]).await.unwrap(),
        "bad signature",
    );
    reject(
        &run("rogue", "rogue", "ping", &[]).await.unwrap(),
        "unknown key",
    );
    reject(
        &run("billing", "billing", "ping", &[]).await.unwrap(),
        "not allowed",
    );
    reject(
        &run("ops", "ops", "ping", &["x=1"]).await.unwrap(),
        "bad arguments",
    );

    // expired, too long, replayed: raw envelopes
    publish_raw(port, envelope(dir.path(), "ops", "old-1", "ping", -200, 60)).await;
    publish_raw(
        port,
        envelope(dir.path(), "ops", "long-1", "ping", 0, 86_400),
    )
    .await;
    publish_raw(port, envelope(dir.path(), "ops", "once-1", "ping", 0, 600)).await;
    let once = envelope(dir.path(), "ops", "once-2", "ping", 0, 600);
    publish_raw(port, once.clone()).await;
    publish_raw(port, once.clone()).await;
    publish_raw(port, b"not json".to_vec()).await;
    let results = |r: &[(String, Value)], id: &str| -> Vec<Value> {
        r.iter()
            .filter(|(t, j)| t == "amr/gw1/command/result" && j["id"] == id)
            .map(|(_, j)| j.clone())
            .collect()
    };
    let got = headend
        .wait_until(PATIENCE, |r| {
            results(r, "once-2").len() >= 3
                && !results(r, "old-1").is_empty()
                && !results(r, "long-1").is_empty()
                && r.iter()
                    .any(|(t, j)| t.ends_with("/command/result") && j["id"].is_null())
        })
        .await
        .unwrap_or_else(|| panic!("results missing\n{}", log_tail(dir.path(), 40)));
    assert!(
        results(&got, "old-1")[0]["reason"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    assert!(
        results(&got, "long-1")[0]["reason"]
            .as_str()
            .unwrap()
            .contains("longer than")
    );
    // Accepted and done once; the second copy rejected (the two answers may come in either
    // order: commands run concurrently with the desk).
    let once2 = results(&got, "once-2");
    let mut states: Vec<&str> = once2.iter().map(|j| j["state"].as_str().unwrap()).collect();
    states.sort();
    assert_eq!(states, vec!["accepted", "done", "rejected"]);
    let replayed = once2.iter().find(|j| j["state"] == "rejected").unwrap();
    assert!(replayed["reason"].as_str().unwrap().contains("replayed"));

    // A replay after a restart of the gateway is still refused.
    gw.terminate();
    let onlines = |r: &[(String, Value)]| {
        r.iter()
            .filter(|(t, j)| t == "amr/gw1/status" && j["state"] == "online")
            .count()
    };
    let before = onlines(&headend.received());
    let mut gw = Gateway::start(&config, "gateway-2.log");
    // Online means subscribed to the command topic.
    headend
        .wait_until(PATIENCE, |r| onlines(r) > before)
        .await
        .expect("gateway online again");
    publish_raw(port, once.clone()).await;
    let got = headend
        .wait_until(PATIENCE, |r| results(r, "once-2").len() >= 4)
        .await
        .unwrap_or_else(|| panic!("no answer to the replay\n{}", log_tail(dir.path(), 40)));
    let last = results(&got, "once-2").pop().unwrap();
    assert_eq!(last["state"], "rejected");
    assert!(
        last["reason"].as_str().unwrap().contains("replayed"),
        "{last}"
    );

    // recall: a subscriber that missed readings gets them with their original seq.
    let seen = seqs_on(&headend.received(), "/reading/m1");
    let (from, to) = (seen[0], seen[seen.len().min(3) - 1]);
    let late = Subscriber::start(port, "headend-late", "amr/gw1/reading/#").await;
    let recall_args = [format!("from_seq={from}"), format!("to_seq={to}")];
    let out = tokio::task::spawn_blocking({
        let p = dir.path().to_path_buf();
        move || {
            let args: Vec<&str> = recall_args.iter().map(String::as_str).collect();
            command(port, &p, "ops", "ops", "recall", &args)
        }
    })
    .await
    .unwrap();
    let recall = result_of(&out);
    assert!(out.status.success(), "{recall}");
    let expected: Vec<u64> = seen
        .iter()
        .copied()
        .filter(|s| *s >= from && *s <= to)
        .collect();
    // Every sequenced message of the range (readings, command results, ...) is held.
    assert_eq!(recall["data"]["republished"], to - from + 1, "{recall}");
    assert_eq!(recall["data"]["missing"], 0);
    let got = late
        .wait_until(PATIENCE, |r| {
            expected
                .iter()
                .all(|s| seqs_on(r, "/reading/m1").contains(s))
        })
        .await
        .expect("recalled readings with their original seq");
    let original = headend
        .received()
        .into_iter()
        .find(|(t, j)| t.contains("/reading/m1") && j["seq"] == from)
        .unwrap();
    let again = got.iter().find(|(_, j)| j["seq"] == from).unwrap();
    assert_eq!(
        again.1, original.1,
        "the same message, with its original seq"
    );

    // kind_seq: the readings of m1 (one kind, one subscription) count 1, 2, 3, ... with no
    // gap, across the restart, while the global seq has gaps (command results in between).
    let kind_seqs: Vec<u64> = headend
        .received()
        .iter()
        .filter(|(t, j)| t == "amr/gw1/reading/m1" && j["kind_seq"].is_u64())
        .map(|(_, j)| j["kind_seq"].as_u64().unwrap())
        .collect();
    let mut sorted = kind_seqs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted[0], 1, "{kind_seqs:?}");
    assert_eq!(
        sorted,
        (1..=*sorted.last().unwrap()).collect::<Vec<u64>>(),
        "no gap in the readings' own sequence"
    );

    // recall by time: the readings of m1 between the first and the third reading, with their
    // original seq and kind_seq, counted per kind.
    // (Distinct readings: the recall above re-sent some to every subscriber.)
    let distinct = |r: &[(String, Value)]| -> Vec<(String, Value)> {
        let mut seen = std::collections::BTreeSet::new();
        r.iter()
            .filter(|(t, j)| t == "amr/gw1/reading/m1" && seen.insert(j["seq"].as_u64()))
            .take(3)
            .cloned()
            .collect()
    };
    let first_readings = distinct(
        &headend
            .wait_until(PATIENCE, |r| distinct(r).len() >= 3)
            .await
            .expect("three readings of m1"),
    );
    let ts = |j: &Value| j["ts"].as_str().unwrap().to_string();
    let from_ts = ts(&first_readings[0].1);
    let to_ms = amr_gateway::clock::parse_rfc3339(&ts(&first_readings[2].1)).unwrap() + 1;
    let to_ts = amr_gateway::clock::rfc3339_ms(to_ms);
    let late = Subscriber::start(port, "headend-late-time", "amr/gw1/reading/#").await;
    let time_args = [
        format!("from={from_ts}"),
        format!("to={to_ts}"),
        "meters=m1".to_string(),
        "kinds=readings,alarms".to_string(),
    ];
    let out = tokio::task::spawn_blocking({
        let p = dir.path().to_path_buf();
        move || {
            let args: Vec<&str> = time_args.iter().map(String::as_str).collect();
            command(port, &p, "ops", "ops", "recall", &args)
        }
    })
    .await
    .unwrap();
    let recall = result_of(&out);
    assert!(out.status.success(), "{recall}");
    assert_eq!(recall["data"]["kinds"]["reading"], 3, "{recall}");
    assert_eq!(recall["data"]["kinds"]["alarm"], 0, "{recall}");
    assert_eq!(recall["data"]["republished"], 3, "{recall}");
    let wanted: Vec<u64> = first_readings
        .iter()
        .map(|(_, j)| j["seq"].as_u64().unwrap())
        .collect();
    let got = late
        .wait_until(PATIENCE, |r| {
            wanted.iter().all(|s| seqs_on(r, "/reading/m1").contains(s))
        })
        .await
        .expect("readings recalled by time");
    let again = got.iter().find(|(_, j)| j["seq"] == wanted[0]).unwrap();
    assert_eq!(
        again.1, first_readings[0].1,
        "the same message, kind_seq included"
    );
    // An unknown kind is a bad argument.
    let out = run(
        "ops",
        "ops",
        "recall",
        &[
            "from=2026-01-01T00:00:00Z",
            "to=2026-01-02T00:00:00Z",
            "kinds=weather",
        ],
    )
    .await
    .unwrap();
    assert_eq!(result_of(&out)["state"], "rejected");

    // The rejections since this gateway process started (the replay and the unknown kind),
    // by reason, in the status document.
    let out = run("ops", "ops", "status", &[]).await.unwrap();
    let status = result_of(&out);
    let rejected = &status["data"]["commands"]["rejected"];
    assert!(rejected["replayed"].as_u64().unwrap() >= 1, "{status}");
    assert!(rejected["bad_arguments"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(rejected["bad_signature"], 0, "{status}");
    // Next to them, what the store's audit records say of the last 24 h.
    assert!(
        status["data"]["commands"]["rejected_24h"].as_u64().unwrap() >= 2,
        "{status}"
    );
    // The separate `status` process counts the rejections from the audit records.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_amr-gateway"))
        .args(["status", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let local: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let commands = &local["commands"];
    assert!(commands["rejected_24h"].as_u64().unwrap() >= 2, "{local}");
    assert!(
        commands["by_state_24h"]["done"].as_u64().unwrap() >= 1,
        "{local}"
    );
    assert_eq!(commands["last_rejected"]["command"], "recall", "{local}");
    assert!(
        commands["last_rejected"]["reason"]
            .as_str()
            .unwrap()
            .contains("weather"),
        "{local}"
    );

    // A flood of 200 commands (more than the desk queues: some are dropped) does not stop
    // the polling.
    let before = seqs_on(&headend.received(), "/reading/m1").len();
    for i in 0..200 {
        publish_raw(
            port,
            envelope(dir.path(), "ops", &format!("flood-{i}"), "ping", 0, 600),
        )
        .await;
    }
    headend
        .wait_until(PATIENCE, |r| seqs_on(r, "/reading/m1").len() >= before + 3)
        .await
        .unwrap_or_else(|| {
            panic!(
                "polling stopped under a flood\n{}",
                log_tail(dir.path(), 30)
            )
        });
    assert!(gw.terminate().success());
}

const SIM_TWO: &str = r#"
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

[[meter]]
bus = "rs485"
unit = 2
model = "eastron-sdm120"
load_kw = 1.5
energy_start_kwh = 100.0
"#;

const METER_M2: &str = r#"
[[meter]]
id = "m2"
bus = "rs485"
unit = 2
model = "eastron-sdm120"
"#;

/// `config_apply` through the command tool: a file with a mistake is refused with its
/// FILE:LINE:COL and nothing changes; a file the gateway cannot start with (its data directory
/// under a regular file) is rolled back and answered `failed`; a good one (a new meter) is
/// applied — the gateway restarts with it, answers `done` afterwards, and reads the new meter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_apply_refuses_rolls_back_and_applies() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let sims = SimRuntime::new();
    let _sim = sims.start(SIM_TWO, "apply-sim", dir.path());
    keygen(dir.path());
    let port = broker.port;
    let config = gateway_config(dir.path(), port);
    let original = std::fs::read_to_string(&config).unwrap();
    let headend = Subscriber::start(port, "headend-apply", "amr/gw1/#").await;
    let mut gw = Gateway::start(&config, "gateway.log");
    headend
        .wait_until(PATIENCE, |r| !seqs_on(r, "/reading/m1").is_empty())
        .await
        .unwrap_or_else(|| panic!("no reading\n{}", log_tail(dir.path(), 30)));
    let apply = |toml: String| {
        let p = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let arg = format!("toml={toml}");
            command(port, &p, "ops", "ops", "config_apply", &[arg.as_str()])
        })
    };

    // A mistake: refused with the place of the problem; the file is as it was.
    let bad = config_text(
        port,
        "data",
        "[[meter]]\nid = \"m2\"\nbus = \"rs485\"\nunit = 2\nmodel = \"eastron-sdm120\"\nphase = \"x\"\n",
    );
    let out = apply(bad).await.unwrap();
    let r = result_of(&out);
    assert_eq!(out.status.code(), Some(1), "{r}");
    assert_eq!(r["state"], "failed", "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("gateway.toml.candidate:"), "{reason}");
    assert!(reason.contains("nothing changed"), "{reason}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), original);

    // A file the gateway cannot start with: rolled back, `failed` with the reason.
    std::fs::write(dir.path().join("blocker"), "a file, not a directory").unwrap();
    let out = apply(config_text(port, "blocker/data", "")).await.unwrap();
    let r = result_of(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{r}\n{}",
        log_tail(dir.path(), 30)
    );
    assert_eq!(r["state"], "failed", "{r}");
    assert!(
        r["reason"].as_str().unwrap().contains("cannot start"),
        "{r}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), original);
    // Still reading with the previous configuration.
    let before = seqs_on(&headend.received(), "/reading/m1").len();
    headend
        .wait_until(PATIENCE, |r| seqs_on(r, "/reading/m1").len() > before)
        .await
        .unwrap_or_else(|| {
            panic!(
                "not reading after the rollback\n{}",
                log_tail(dir.path(), 30)
            )
        });

    // A good file: a new meter. Done after the restart; the new meter is read.
    let good = config_text(port, "data", METER_M2);
    let out = apply(good.clone()).await.unwrap();
    let r = result_of(&out);
    assert!(out.status.success(), "{r}\n{}", log_tail(dir.path(), 30));
    assert_eq!(r["state"], "done", "{r}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), good);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("gateway.toml.previous")).unwrap(),
        original
    );
    assert!(!dir.path().join("gateway.toml.apply").exists());
    headend
        .wait_until(PATIENCE, |r| !seqs_on(r, "/reading/m2").is_empty())
        .await
        .unwrap_or_else(|| panic!("the new meter is not read\n{}", log_tail(dir.path(), 30)));
    assert!(gw.terminate().success());
}
