//! DL/T 645 end to end, against real parts: simulated DL/T 645 meters (2007 and 1997 on one
//! bus) on a real pseudo-terminal (8N1: the kernel refuses parity on ptys), the gateway as a
//! real `amr-gateway run` process, a real mosquitto and a headend subscriber. Values equal the
//! simulator's, `seq` is complete, and a meter that refuses block identifiers is read item by
//! item — learned once, kept in the store, and still known after a restart. The field tools
//! `read` and `scan` run as processes against the same simulated meters.

mod support;

use amr_gateway::sim::{Fault, SimHandle};
use amr_gateway::store::Store;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{Gateway, Mosquitto, Received, SimRuntime, Subscriber, log_tail};

/// Upper bound for waiting on a slow shared machine; never a speed requirement.
const PATIENCE: Duration = Duration::from_secs(120);

const BAUD: u32 = 9600;

/// (meter id, simulator unit, address, model, multiplier, energy at the start)
const METERS: &[(&str, u8, &str, &str, f64, f64)] = &[
    ("h1", 1, "000000000001", "dlt645-2007", 1.0, 1000.0),
    ("h2", 2, "202208310002", "dlt645-2007", 30.0, 2000.0),
    ("h3", 3, "000000001997", "dlt645-1997", 1.0, 300.0),
];

/// The meter that refuses every block identifier (like the outside stack in the reference).
const REFUSES: &str = "h1";

fn sim_text(meters: &[(&str, u8, &str, &str, f64, f64)]) -> String {
    let mut text = format!(
        "[[bus]]\nname = \"d\"\nlink = \"ttyD\"\nprotocol = \"dlt645\"\nbaud = {BAUD}\n\
         parity = \"none\"\nturnaround_ms = 20\ngateway_timeout_ms = 500\n"
    );
    for (_, unit, address, model, _, energy) in meters {
        text += &format!(
            "\n[[meter]]\nbus = \"d\"\nunit = {unit}\naddress = \"{address}\"\nmodel = \"{model}\"\n\
             load_kw = 2.5\nenergy_start_kwh = {energy}\nvoltage_v = 228.0\n"
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

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
reconnect_max_s = 2

[[bus]]
name = "d"
protocol = "dlt645"
device = "ttyD"
baud = {BAUD}
parity = "none"
timeout_ms = 500
poll_interval_s = 1
"#
    );
    for (id, _, address, model, mult, _) in METERS {
        text += &format!(
            "\n[[meter]]\nid = \"{id}\"\nbus = \"d\"\naddress = \"{address}\"\nmodel = \"{model}\"\n\
             multiplier = {mult}\n"
        );
    }
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start_sim(rt: &SimRuntime, dir: &Path) -> SimHandle {
    let sim = rt.start(&sim_text(METERS), "dlt645-sim", dir);
    let refuses = METERS.iter().find(|m| m.0 == REFUSES).unwrap().1;
    let fault = Fault {
        refuse_blocks: true,
        ..Fault::default()
    };
    sim.set_fault("d", refuses, fault).unwrap();
    sim
}

fn readings<'a>(received: &'a [Received], meter: &str) -> Vec<&'a serde_json::Value> {
    received
        .iter()
        .filter(|(t, j)| t.contains("/reading/") && j["meter"] == meter)
        .map(|(_, j)| j)
        .collect()
}

/// The quantities the model publishes.
fn quantities(model: &str) -> usize {
    let library = amr_gateway::meter::ModelLibrary::builtin();
    let model = library.get_dlt645(model).unwrap();
    model.entries.iter().filter(|e| e.is_quantity()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlt645_readings_reach_the_headend_and_the_block_fallback_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let rt = SimRuntime::new();
    let sim = start_sim(&rt, dir.path());
    let headend = Subscriber::start(broker.port, "headend-dlt", "amr/gw1/#").await;
    let config = gateway_config(dir.path(), broker.port);
    let mut gw = Gateway::start(&config, "gateway-1.log");

    let got = headend
        .wait_until(PATIENCE, |r| {
            METERS.iter().all(|m| readings(r, m.0).len() >= 4)
        })
        .await
        .unwrap_or_else(|| panic!("not enough readings\n{}", log_tail(dir.path(), 30)));

    // Sequence: every sequenced message in arrival order, +1 each, from 1.
    let seqs: Vec<u64> = got
        .iter()
        .filter_map(|(_, j)| j.get("seq").and_then(|s| s.as_u64()))
        .collect();
    assert_eq!(seqs[0], 1, "a fresh gateway starts at seq 1");
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "seq out of order or missing: {seqs:?}");
    }

    // Values: what the simulator serves, primary side, every quantity of the model.
    for (id, unit, _, model, mult, start) in METERS {
        for r in readings(&got, id) {
            let values = r["values"].as_object().unwrap();
            assert_eq!(values.len(), quantities(model), "{id}: {r}");
            for q in ["voltage_l1_v", "current_l1_a", "frequency_hz"] {
                // The 1997 identifiers have no frequency.
                let Some(got) = values.get(q).and_then(|v| v.as_f64()) else {
                    assert_eq!(*model, "dlt645-1997", "{id}: no {q}");
                    continue;
                };
                // A multiplier alone is the CT ratio of a low-voltage meter: currents × it.
                let scale = if q.starts_with("current_") {
                    *mult
                } else {
                    1.0
                };
                let want = sim.value_now("d", *unit, q).unwrap() * scale;
                // 1997 voltages have no decimals (XXX V).
                assert!(
                    (got - want).abs() <= 0.51 * scale,
                    "{id} {q}: gateway {got}, simulator {want}"
                );
            }
            let p = values["power_kw"].as_f64().unwrap();
            let want_p = sim.value_now("d", *unit, "power_kw").unwrap() * mult;
            assert!(
                (p - want_p).abs() <= 0.01 * mult,
                "{id} power: {p} vs {want_p}"
            );
            let e = values["energy_import_kwh"].as_f64().unwrap();
            let now_e = sim.value_now("d", *unit, "energy_import_kwh").unwrap() * mult;
            assert!(
                e >= (start - 0.01) * mult && e <= now_e + 0.01 * mult,
                "{id} energy {e} outside [{}, {now_e}]",
                start * mult
            );
        }
    }
    assert!(
        got.iter()
            .any(|(t, j)| t == "amr/gw1/meter/h3/state" && j["state"] == "online"),
        "no online meter state"
    );
    assert!(gw.terminate().success(), "SIGTERM ends the gateway cleanly");

    // Learned: the refusing meter's blocks, and only its.
    let db = dir.path().join("data/amr-gateway.db");
    let refused = {
        let config = amr_gateway::config::load(&config).unwrap();
        let store = Store::open(&db, &config.store).unwrap();
        store.refused_blocks().unwrap()
    };
    let blocks = &refused[REFUSES];
    for di in ["0001FF00", "0201FF00", "0202FF00"] {
        assert!(blocks.iter().any(|b| b == di), "{di} not kept: {blocks:?}");
    }
    assert_eq!(refused.len(), 1, "{refused:?}");
    let log1 = std::fs::read_to_string(dir.path().join("gateway-1.log")).unwrap();
    assert!(log1.contains("refuses block identifiers"), "{log1}");

    // Restart: the gateway starts from what it learned; nothing to learn again.
    let before = readings(&headend.received(), REFUSES).len();
    let _gw2 = Gateway::start(&config, "gateway-2.log");
    let got = headend
        .wait_until(PATIENCE, |r| readings(r, REFUSES).len() >= before + 3)
        .await
        .unwrap_or_else(|| {
            panic!(
                "no readings after the restart\n{}",
                log_tail(dir.path(), 30)
            )
        });
    for r in &readings(&got, REFUSES)[before..] {
        assert_eq!(
            r["values"].as_object().unwrap().len(),
            quantities("dlt645-2007")
        );
    }
    let log2 = std::fs::read_to_string(dir.path().join("gateway-2.log")).unwrap();
    assert!(
        !log2.contains("refuses block identifiers"),
        "learned again after the restart:\n{log2}"
    );
    // Nothing missing across the restart.
    let seqs: std::collections::BTreeSet<u64> = got
        .iter()
        .filter_map(|(_, j)| j.get("seq").and_then(|s| s.as_u64()))
        .collect();
    let last = *seqs.last().unwrap();
    let missing: Vec<u64> = (1..=last).filter(|s| !seqs.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "seq gaps across the restart: {missing:?}"
    );
}

/// `amr-gateway ARGS` run to its end: exit code and stdout.
fn tool(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_amr-gateway"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run amr-gateway");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.is_empty() || out.status.success(),
        "amr-gateway {args:?}: {stderr}"
    );
    (out.status.code(), stdout)
}

const LINE: &[&str] = &[
    "--protocol",
    "dlt645",
    "--device",
    "ttyD",
    "--baud",
    "9600",
    "--parity",
    "none",
];

#[test]
fn read_a_dlt645_meter_as_a_process() {
    let dir = tempfile::tempdir().unwrap();
    let rt = SimRuntime::new();
    let sim = start_sim(&rt, dir.path());
    for (id, unit, address, model, _, _) in METERS {
        let mut args = vec!["read"];
        args.extend(LINE);
        args.extend(["--address", address, "--model", model, "--json"]);
        let (code, out) = tool(dir.path(), &args);
        assert_eq!(code, Some(0), "{id}: {out}");
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["address"], *address, "{json}");
        assert!(json.get("unit").is_none(), "{json}");
        assert_eq!(json["model"], *model);
        let values = json["values"].as_object().unwrap();
        assert_eq!(values.len(), quantities(model), "{id}: {json}");
        let e = values["energy_import_kwh"].as_f64().unwrap();
        let now = sim.value_now("d", *unit, "energy_import_kwh").unwrap();
        assert!(e <= now + 0.01 && e >= now - 1.0, "{id}: {e} vs {now}");
        let v = values["voltage_l1_v"].as_f64().unwrap();
        let want = sim.value_now("d", *unit, "voltage_l1_v").unwrap();
        assert!((v - want).abs() <= 0.51, "{id}: {v} vs {want}");
        assert_eq!(json["errors"].as_array().unwrap().len(), 0, "{json}");
    }
    // The table, and a meter that is not there.
    let mut args = vec!["read"];
    args.extend(LINE);
    args.extend(["--address", "000000000001"]);
    let (code, out) = tool(dir.path(), &args);
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with("address 000000000001 · model dlt645-2007"),
        "{out}"
    );
    let mut args = vec!["read"];
    args.extend(LINE);
    args.extend(["--address", "000000000099", "--timeout-ms", "300"]);
    let (code, out) = tool(dir.path(), &args);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("address 000000000099 does not answer"),
        "{out}"
    );
}

#[test]
fn scan_a_dlt645_bus_as_a_process() {
    let dir = tempfile::tempdir().unwrap();
    let rt = SimRuntime::new();
    // A bus of one meter: the wildcard read finds its address.
    let lone = sim_text(&METERS[1..2]).replace("ttyD", "ttyL");
    let _lone = rt.start(&lone, "lone", dir.path());
    let mut args = vec!["scan"];
    args.extend(LINE);
    args[4] = "ttyL";
    args.push("--json");
    let (code, out) = tool(dir.path(), &args);
    assert_eq!(code, Some(0), "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["found"].as_array().unwrap().len(), 1, "{json}");
    let found = &json["found"][0];
    assert_eq!(found["address"], "202208310002");
    assert_eq!(found["answer"], "data");
    assert_eq!(found["likely"][0], "dlt645-2007", "{json}");

    // A multi-drop bus and a list of addresses: which answer, and their edition.
    let _sim = start_sim(&rt, dir.path());
    std::fs::write(
        dir.path().join("addresses.txt"),
        "# flats\n000000000001\n000000000042\n202208310002\n000000001997\n",
    )
    .unwrap();
    let mut args = vec!["scan"];
    args.extend(LINE);
    args.extend([
        "--addresses",
        "addresses.txt",
        "--timeout-ms",
        "300",
        "--json",
    ]);
    let (code, out) = tool(dir.path(), &args);
    assert_eq!(code, Some(0), "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["scanned"], 4);
    let found: Vec<(String, String)> = json["found"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["address"].as_str().unwrap().to_string(),
                f["likely"][0].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            ("000000000001".into(), "dlt645-2007".into()),
            ("202208310002".into(), "dlt645-2007".into()),
            ("000000001997".into(), "dlt645-1997".into()),
        ],
        "{json}"
    );
}

/// DL/T 645 through a transparent serial server: `[[bus]] protocol = "dlt645"` with
/// `address = "host:port"` and no `device`, the frames carried raw over TCP (the simulator
/// listens like the serial server would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlt645_through_a_serial_server_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let rt = SimRuntime::new();
    let sim_file = sim_text(METERS).replace("link = \"ttyD\"", "listen = \"127.0.0.1:0\"");
    let sim = rt.start(&sim_file, "dlt645-tcp-sim", dir.path());
    let server = sim.tcp_address("d").expect("the simulator listens");
    let headend = Subscriber::start(broker.port, "headend-dlt-tcp", "amr/gw1/#").await;
    let config = gateway_config(dir.path(), broker.port);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("device = \"ttyD\"", &format!("address = \"{server}\""));
    std::fs::write(&config, text).unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_amr-gateway"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let _gw = Gateway::start(&config, "gateway.log");
    let got = headend
        .wait_until(PATIENCE, |r| {
            METERS.iter().all(|m| readings(r, m.0).len() >= 2)
        })
        .await
        .unwrap_or_else(|| panic!("no readings over TCP\n{}", log_tail(dir.path(), 30)));
    for (id, unit, _, model, mult, _) in METERS {
        let r = readings(&got, id)[1];
        assert_eq!(
            r["values"].as_object().unwrap().len(),
            quantities(model),
            "{id}: {r}"
        );
        let v = r["values"]["voltage_l1_v"].as_f64().unwrap();
        let want = sim.value_now("d", *unit, "voltage_l1_v").unwrap();
        assert!((v - want).abs() <= 0.51, "{id}: {v} vs {want}");
        let e = r["values"]["energy_import_kwh"].as_f64().unwrap();
        let now_e = sim.value_now("d", *unit, "energy_import_kwh").unwrap() * mult;
        assert!(e > 0.0 && e <= now_e + 0.01 * mult, "{id}: {e} vs {now_e}");
    }
    assert!(sim.connections("d") >= 1);
    let state = got
        .iter()
        .rev()
        .find(|(t, _)| t == "amr/gw1/meter/h2/state")
        .map(|(_, j)| j.clone())
        .unwrap();
    assert_eq!(state["address"], "202208310002", "{state}");
}
