//! The field tools as a user runs them: `amr-gateway simulate` in one process, and `read`,
//! `scan`, `register`, `setup`, `test`, `status` (and `run`) as separate processes against its
//! pty and TCP ports, checking exit codes and what they print.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for waiting on a slow machine; never an assertion about speed.
const PATIENCE: Duration = Duration::from_secs(45);

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_amr-gateway"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("cannot run amr-gateway")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A child process that gets SIGTERM (then SIGKILL) when dropped.
struct Process(Child);

impl Process {
    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "process ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `amr-gateway simulate` with an RS-485 bus on a pty (units 5: SDM120, 7: DTSU666 behind
/// 300/5 A CTs, its registers secondary-side), a Modbus TCP bus (unit 3: SDM630) and a serial
/// server in RTU-over-TCP mode (unit 4: SDM120).
struct Simulator {
    dir: tempfile::TempDir,
    link: PathBuf,
    tcp: String,
    rtu_over_tcp: String,
    _process: Process,
}

fn simulate() -> Simulator {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let rtu_port = support::free_port();
    let file = dir.path().join("sim.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[bus]]
name = "rs485"
link = "ttyX"
baud = 9600
turnaround_ms = 10

[[bus]]
name = "serial-server"
listen = "127.0.0.1:{port}"
protocol = "modbus-tcp"

[[meter]]
bus = "rs485"
unit = 5
model = "eastron-sdm120"
load_kw = 2.3

[[meter]]
bus = "rs485"
unit = 7
model = "chint-dtsu666"
load_kw = 12.0
multiplier = 60.0

[[meter]]
bus = "serial-server"
unit = 3
model = "eastron-sdm630"

[[bus]]
name = "rtu-server"
listen = "127.0.0.1:{rtu_port}"
protocol = "modbus-rtu-over-tcp"
baud = 9600

[[meter]]
bus = "rtu-server"
unit = 4
model = "eastron-sdm120"
"#
        ),
    )
    .unwrap();
    let child = bin()
        .args(["simulate", "--config"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let process = Process(child);
    let link = dir.path().join("ttyX");
    let deadline = Instant::now() + PATIENCE;
    while !link.exists() {
        assert!(Instant::now() < deadline, "simulator link never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    support::wait_for_listener(port, PATIENCE);
    support::wait_for_listener(rtu_port, PATIENCE);
    Simulator {
        link,
        tcp: format!("127.0.0.1:{port}"),
        rtu_over_tcp: format!("127.0.0.1:{rtu_port}"),
        dir,
        _process: process,
    }
}

fn link_str(sim: &Simulator) -> &str {
    sim.link.to_str().unwrap()
}

fn read_args<'a>(sim: &'a Simulator, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "read",
        "--device",
        link_str(sim),
        "--baud",
        "9600",
        "--unit",
        "5",
        "--model",
        "eastron-sdm120",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn read_prints_every_quantity_with_its_unit_and_json_with_values() {
    let sim = simulate();
    let out = run(&read_args(&sim, &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let voltage = table
        .lines()
        .find(|l| l.starts_with("voltage_l1_v"))
        .unwrap_or_else(|| panic!("no voltage line in:\n{table}"));
    assert!(voltage.trim_end().ends_with(" V"), "{voltage}");
    let v: f64 = voltage.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((v - 230.0).abs() < 0.5, "{voltage}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("energy_import_kwh") && l.trim_end().ends_with("kWh")),
        "{table}"
    );
    assert!(
        table.starts_with("unit 5 · model eastron-sdm120"),
        "{table}"
    );

    let out = run(&read_args(&sim, &["--json"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["unit"], 5);
    assert_eq!(json["errors"], serde_json::json!([]));
    let p = json["values"]["power_kw"].as_f64().unwrap();
    assert!((p - 2.3).abs() < 1e-3, "{json}");
}

#[test]
fn read_of_a_unit_that_does_not_answer_says_what_to_check() {
    let sim = simulate();
    let mut args = read_args(&sim, &["--timeout-ms", "200"]);
    args[6] = "6";
    let out = run(&args);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("no reply"), "{text}");
    assert!(text.contains("unit id"), "{text}");
}

#[test]
fn read_over_modbus_tcp() {
    let sim = simulate();
    let out = run(&[
        "read",
        "--address",
        &sim.tcp,
        "--unit",
        "3",
        "--model",
        "eastron-sdm630",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    for q in ["voltage_l3_v", "current_l2_a", "frequency_hz"] {
        assert!(table.lines().any(|l| l.starts_with(q)), "{q} in:\n{table}");
    }
}

#[test]
fn scan_finds_exactly_the_simulated_units_and_guesses_their_models() {
    let sim = simulate();
    let args = [
        "scan",
        "--device",
        link_str(&sim),
        "--baud",
        "9600",
        "--units",
        "1-10",
        "--timeout-ms",
        "100",
    ];
    let out = run(&[&args[..], &["--json"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["scanned"], 10);
    let found = json["found"].as_array().unwrap();
    let units: Vec<u64> = found.iter().map(|f| f["unit"].as_u64().unwrap()).collect();
    assert_eq!(units, vec![5, 7], "{json}");
    let models = |i: usize| -> Vec<String> {
        found[i]["likely"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect()
    };
    assert!(models(0).contains(&"eastron-sdm120".to_string()), "{json}");
    assert!(models(1).contains(&"chint-dtsu666".to_string()), "{json}");

    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    // Each unit as it was found, then the table.
    assert!(table.starts_with("found    5  data"), "{table}");
    assert!(table.contains("\nfound    7  data"), "{table}");
    assert!(table.contains("\n2 of 10 unit id(s) answered"), "{table}");
    // At the wrong baud rate the meters hear garbage: nothing answers, and scan fails.
    let wrong: Vec<&str> = args
        .iter()
        .map(|a| if *a == "9600" { "19200" } else { *a })
        .map(|a| if a == "1-10" { "5-7" } else { a })
        .collect();
    let out = run(&wrong);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("nothing answered"),
        "{}",
        stdout(&out)
    );
    assert!(
        table
            .lines()
            .any(|l| l.trim_start().starts_with("5 ") && l.contains("eastron-sdm120")),
        "{table}"
    );
}

fn gateway_config(dir: &Path, link: &Path) -> PathBuf {
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[gateway]
id = "tx-test"
data_dir = "data"
log_level = "warn"

[mqtt]
host = "127.0.0.1"
# Nothing listens here: readings wait in the outbox.
port = {port}

[[bus]]
name = "rs485"
protocol = "modbus-rtu"
device = "{link}"
baud = 9600
timeout_ms = 200
poll_interval_s = 1

[[meter]]
id = "c-05"
bus = "rs485"
unit = 5
model = "eastron-sdm120"

[[meter]]
id = "tx-07"
bus = "rs485"
unit = 7
model = "chint-dtsu666"

[[meter]]
id = "c-09"
bus = "rs485"
unit = 9
model = "eastron-sdm120"
"#,
            port = support::free_port(),
            link = link.display()
        ),
    )
    .unwrap();
    path
}

fn status_json(config: &Path) -> Option<Value> {
    let out = run(&["status", "--json", "--config", config.to_str().unwrap()]);
    out.status
        .success()
        .then(|| serde_json::from_str(&stdout(&out)).unwrap())
}

fn meter<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["buses"][0]["meters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["meter"] == id)
        .unwrap_or_else(|| panic!("meter {id} missing from {status}"))
}

#[test]
fn read_refuses_a_port_the_daemon_polls_and_status_shows_every_meter_after_it_stops() {
    let sim = simulate();
    let config = gateway_config(sim.dir.path(), &sim.link);
    let cfg = config.to_str().unwrap();
    let out = run(&["status", "--config", cfg]);
    assert_eq!(out.status.code(), Some(2), "status before any run");
    assert!(stderr(&out).contains("has not run"), "{}", stderr(&out));

    let mut daemon = Process(
        bin()
            .args(["run", "--config", cfg])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Until both live meters have a reading in the store.
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(st) = status_json(&config)
            && ["c-05", "tx-07"]
                .iter()
                .all(|m| !meter(&st, m)["last_reading"].is_null())
        {
            break;
        }
        assert!(Instant::now() < deadline, "no readings from the daemon");
        std::thread::sleep(Duration::from_millis(300));
    }
    // A running daemon is told apart from a dead one: its pid and a fresh heartbeat.
    let st = status_json(&config).unwrap();
    assert_eq!(st["daemon"]["running"], true, "{st}");
    assert_eq!(
        st["daemon"]["pid"].as_u64(),
        Some(daemon.0.id() as u64),
        "{st}"
    );
    assert_eq!(st["daemon"]["version"], env!("CARGO_PKG_VERSION"), "{st}");

    // Two masters on one bus: the tool refuses.
    let out = run(&read_args(&sim, &[]));
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("in use"), "{err}");
    assert!(err.contains(link_str(&sim)), "{err}");

    assert!(daemon.terminate().success());

    let out = run(&["status", "--config", cfg]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    for id in ["c-05", "tx-07", "c-09"] {
        assert!(
            table.lines().any(|l| l.trim_start().starts_with(id)),
            "{id} in:\n{table}"
        );
    }
    assert!(table.contains("bus rs485 (modbus-rtu"), "{table}");
    assert!(table.contains("outbox: "), "{table}");
    assert!(table.contains("messages waiting"), "{table}");
    assert!(
        table.contains("daemon: NOT RUNNING (last heartbeat"),
        "a stopped daemon is said plainly:\n{table}"
    );
    assert!(
        table.contains("they go out when the daemon runs again"),
        "{table}"
    );

    let st = status_json(&config).unwrap();
    assert!(st["outbox"]["backlog"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["daemon"]["running"], false, "{st}");
    assert!(st["daemon"]["heartbeat_age_s"].as_i64().is_some(), "{st}");
    for id in ["c-05", "tx-07"] {
        let m = meter(&st, id);
        assert_eq!(m["state"], "online", "{m}");
        assert!(m["success_rate_pct"].as_f64().unwrap() > 0.0, "{m}");
    }
    let m = meter(&st, "c-09");
    assert!(
        ["offline", "unknown"].contains(&m["state"].as_str().unwrap()),
        "{m}"
    );
    let e = meter(&st, "c-05")["energy_import_kwh"].as_f64().unwrap();
    assert!(e >= 0.0, "{st}");
    assert!(meter(&st, "c-09")["last_reading"].is_null(), "{st}");

    // The port is free again.
    let out = run(&read_args(&sim, &[]));
    assert!(out.status.success(), "{}", stderr(&out));
}

fn json_of(out: &Output) -> Value {
    serde_json::from_str(&stdout(out))
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(out), stderr(out)))
}

#[test]
fn register_read_shows_raw_words_and_typed_values() {
    let sim = simulate();
    let dev = link_str(&sim);
    // Input register 30001 of the SDM120: voltage, f32.
    let base = [
        "register",
        "read",
        "--device",
        dev,
        "--unit",
        "5",
        "--function",
        "4",
        "--start",
        "0",
    ];
    let out = run(&[&base[..], &["--type", "f32", "--count", "2", "--json"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let json = json_of(&out);
    assert_eq!(
        (json["unit"].as_u64(), json["function"].as_u64()),
        (Some(5), Some(4))
    );
    let values = json["values"].as_array().unwrap();
    assert_eq!(values.len(), 2, "{json}");
    let v = values[0]["value"].as_f64().unwrap();
    assert!((v - 230.0).abs() < 0.5, "{json}");
    assert_eq!(values[1]["address"], 2);
    assert_eq!(values[0]["raw"].as_array().unwrap().len(), 2);

    // The same two registers as raw hex, little word order making another float.
    let out = run(&[&base[..], &["--type", "hex", "--count", "2"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(
        table.starts_with("unit 5 · function 04 (input registers) · from 0 (0x0000)"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("0 (0x0000)") && l.contains("0x43")),
        "{table}"
    );

    // Coils: the meter has none and says so (exception 01); exit 1.
    let out = run(&[
        "register",
        "read",
        "--device",
        dev,
        "--unit",
        "5",
        "--function",
        "1",
        "--start",
        "0",
        "--count",
        "8",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("exception 0x01"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not support this function"),
        "{}",
        stderr(&out)
    );

    // A unit that is not there: the serial advice.
    let out = run(&[
        "register",
        "read",
        "--device",
        dev,
        "--unit",
        "6",
        "--start",
        "0",
        "--timeout-ms",
        "100",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("check the unit id, the baud rate"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn register_write_is_confirmed_and_reads_back_and_a_refusal_is_explained() {
    let sim = simulate();
    let dev = link_str(&sim);
    // The SDM120's baud rate code (holding 40029, f32): written with function 16.
    let out = run(&[
        "register",
        "write",
        "--device",
        dev,
        "--unit",
        "5",
        "--register",
        "0x001C",
        "--value",
        "1",
        "--type",
        "f32",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json = json_of(&out);
    assert_eq!(json["function"], 16);
    assert_eq!(json["address"], 28);
    assert_eq!(json["values"], serde_json::json!([0x3F80, 0]));
    assert_eq!(json["confirmed"], true);
    let out = run(&[
        "register", "read", "--device", dev, "--unit", "5", "--start", "28", "--type", "f32",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_of(&out)["values"][0]["value"], 1.0);

    // One register with function 06; the meter has no such register: exception 02.
    let out = run(&[
        "register",
        "write",
        "--device",
        dev,
        "--unit",
        "5",
        "--register",
        "300",
        "--value",
        "7",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("exception 0x02") && err.contains("no such register"),
        "{err}"
    );

    // A coil (function 05): no coils on a meter, exception 01.
    let out = run(&[
        "register", "write", "--device", dev, "--unit", "5", "--coil", "0", "--value", "on",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("exception 0x01"), "{}", stderr(&out));

    // Over Modbus TCP the same: the SDM630's baud rate code, written and read back.
    let tcp = sim.tcp.as_str();
    let out = run(&[
        "register",
        "write",
        "--address",
        tcp,
        "--unit",
        "3",
        "--register",
        "0x001C",
        "--value",
        "3",
        "--type",
        "f32",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("confirmed"), "{}", stdout(&out));
    let out = run(&[
        "register",
        "read",
        "--address",
        tcp,
        "--unit",
        "3",
        "--start",
        "0x001C",
        "--type",
        "f32",
        "--json",
    ]);
    assert_eq!(json_of(&out)["values"][0]["value"], 3.0);

    // Bad arguments: exit 2, naming the option.
    let out = run(&[
        "register",
        "write",
        "--device",
        dev,
        "--unit",
        "5",
        "--register",
        "1",
        "--value",
        "70000",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--value 70000 is not a u16 value"),
        "{}",
        stderr(&out)
    );
    let out = run(&[
        "register", "write", "--device", dev, "--unit", "5", "--coil", "1", "--value", "maybe",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn setup_gives_a_meter_a_new_unit_id_where_its_model_documents_how() {
    let sim = simulate();
    let dev = link_str(&sim);
    let out = run(&[
        "setup",
        "--device",
        dev,
        "--unit",
        "5",
        "--model",
        "eastron-sdm120",
        "--new-unit",
        "12",
        "--new-baud",
        "4800",
        "--json",
    ]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let json = json_of(&out);
    assert_eq!(json["unit"], 12, "{json}");
    assert_eq!(json["baud_written"], 4800, "{json}");
    // The meter answers at its new unit id now, not at the old one.
    let read = |unit: &str| {
        run(&[
            "read",
            "--device",
            dev,
            "--unit",
            unit,
            "--model",
            "eastron-sdm120",
            "--timeout-ms",
            "150",
            "--json",
        ])
    };
    assert!(read("12").status.success());
    assert_eq!(read("5").status.code(), Some(1));
    // The baud code the model lists for 4800 is in its register.
    let out = run(&[
        "register", "read", "--device", dev, "--unit", "12", "--start", "0x001C", "--type", "f32",
        "--json",
    ]);
    assert_eq!(json_of(&out)["values"][0]["value"], 1.0);

    // A model without [setup], and a rate the model does not take: refused before the bus.
    let out = run(&[
        "setup",
        "--device",
        dev,
        "--unit",
        "7",
        "--model",
        "chint-dtsu666",
        "--new-unit",
        "8",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("documents no way to set its unit id"), "{err}");
    assert!(err.contains("eastron-sdm120"), "{err}");
    let out = run(&[
        "setup",
        "--device",
        dev,
        "--unit",
        "12",
        "--model",
        "eastron-sdm120",
        "--new-baud",
        "19200",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("baud 19200 is not one the model can be set to"),
        "{}",
        stderr(&out)
    );
}

/// A configuration of the simulator's meters for `amr-gateway test`: the DTSU666 behind
/// 300/5 A CTs (`ct_ratio = 60`), the SDM630 on Modbus TCP, and `extra` appended.
fn test_config(sim: &Simulator, extra: &str) -> PathBuf {
    let path = sim.dir.path().join("test.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[gateway]
id = "tx-test"
data_dir = "data"

[mqtt]
host = "127.0.0.1"

[[bus]]
name = "rs485"
protocol = "modbus-rtu"
device = "{link}"
baud = 9600
timeout_ms = 150

[[bus]]
name = "tcp"
protocol = "modbus-tcp"
address = "{tcp}"

[[meter]]
id = "c-05"
bus = "rs485"
unit = 5
model = "eastron-sdm120"

[[meter]]
id = "supply"
bus = "rs485"
unit = 7
model = "chint-dtsu666"
ct_ratio = 60

[[meter]]
id = "m-03"
bus = "tcp"
unit = 3
model = "eastron-sdm630"
{extra}"#,
            link = sim.link.display(),
            tcp = sim.tcp
        ),
    )
    .unwrap();
    path
}

#[test]
fn test_reads_every_meter_once_with_primary_side_currents() {
    let sim = simulate();
    let config = test_config(&sim, "");
    let out = run(&["test", "--config", config.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let json = json_of(&out);
    assert_eq!(
        (json["answered"].as_u64(), json["failed"].as_u64()),
        (Some(3), Some(0))
    );
    let meters = json["meters"].as_array().unwrap();
    let ids: Vec<&str> = meters
        .iter()
        .map(|m| m["meter"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c-05", "supply", "m-03"]);
    // Behind 300/5 A CTs the meter registers secondary values; the reading is primary-side
    // throughout: U × I × PF over the phases is the (primary) power.
    let supply = &meters[1]["values"];
    let pf = supply["power_factor"].as_f64().unwrap();
    let p: f64 = (1..=3)
        .map(|i| {
            supply[format!("voltage_l{i}_v")].as_f64().unwrap()
                * supply[format!("current_l{i}_a")].as_f64().unwrap()
                * pf
                / 1000.0
        })
        .sum();
    let power = supply["power_kw"].as_f64().unwrap();
    assert!((power - 12.0).abs() < 0.5, "{supply}");
    assert!(
        (p - power).abs() < power * 0.02,
        "U·I·PF {p} kW vs {power} kW: {supply}"
    );
    let i1 = supply["current_l1_a"].as_f64().unwrap();
    assert!(
        i1 > 10.0,
        "primary current, not the CT's secondary: {supply}"
    );

    // The table names every meter; a meter that does not answer fails the run (exit 1).
    let config = test_config(
        &sim,
        "\n[[meter]]\nid = \"c-09\"\nbus = \"rs485\"\nunit = 9\nmodel = \"eastron-sdm120\"\n",
    );
    let out = run(&["test", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let table = stdout(&out);
    assert!(table.starts_with("meter "), "{table}");
    let row = |id: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no {id} in:\n{table}"))
            .to_string()
    };
    assert!(
        row("c-05").contains("unit 5") && row("c-05").trim_end().ends_with("ok"),
        "{table}"
    );
    assert!(row("m-03").contains("eastron-sdm630"), "{table}");
    assert!(row("c-09").contains("no reply"), "{table}");
    assert!(table.contains("3 of 4 meter(s) answered"), "{table}");

    // An invalid configuration: exit 2 with FILE:LINE:COL.
    let config = test_config(
        &sim,
        "\n[[meter]]\nid = \"x\"\nbus = \"nope\"\nunit = 1\nmodel = \"eastron-sdm120\"\n",
    );
    let out = run(&["test", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("test.toml:"), "{}", stderr(&out));
}

#[test]
fn scan_prints_each_unit_as_it_is_found_into_a_pipe() {
    use std::io::BufRead;
    let sim = simulate();
    let mut child = bin()
        .args([
            "scan",
            "--device",
            link_str(&sim),
            "--units",
            "5-120",
            "--timeout-ms",
            "100",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut process = Process(child);
    let mut lines = std::io::BufReader::new(out).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("found    5  data"), "{first}");
    // The line came while the scan went on: units 8..120 were still to be tried.
    assert!(
        process.0.try_wait().unwrap().is_none(),
        "the scan had already ended"
    );
    let _ = process.terminate();
}

#[test]
fn tools_check_line_settings_like_check_config() {
    let sim = simulate();
    let dev = link_str(&sim);
    let out = run(&[
        "read",
        "--device",
        dev,
        "--baud",
        "9601",
        "--unit",
        "5",
        "--model",
        "eastron-sdm120",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--baud 9601 is not a standard rate; use one of: 300,"),
        "{}",
        stderr(&out)
    );
    let out = run(&["scan", "--device", dev, "--data-bits", "9"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--data-bits 9 is not possible; use 7 or 8"),
        "{}",
        stderr(&out)
    );
    let out = run(&[
        "register",
        "read",
        "--device",
        dev,
        "--unit",
        "5",
        "--start",
        "0",
        "--stop-bits",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--stop-bits 3 is not possible; use 1 or 2"),
        "{}",
        stderr(&out)
    );
    // 8N2 is a line the tools can open (the simulator's line is 8N1: it hears garbage).
    let out = run(&[
        "read",
        "--device",
        dev,
        "--stop-bits",
        "2",
        "--unit",
        "5",
        "--model",
        "eastron-sdm120",
        "--timeout-ms",
        "100",
    ]);
    assert_ne!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn modbus_tcp_to_an_rtu_over_tcp_port_suggests_the_protocol() {
    let sim = simulate();
    let read = |extra: &[&str]| {
        run(&[
            &[
                "read",
                "--address",
                &sim.rtu_over_tcp,
                "--unit",
                "4",
                "--model",
                "eastron-sdm120",
                "--timeout-ms",
                "200",
            ][..],
            extra,
        ]
        .concat())
    };
    let out = read(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains("RTU-over-TCP mode; try --protocol modbus-rtu-over-tcp"),
        "{text}"
    );
    assert!(!text.contains("A/B swapped"), "{text}");
    let out = read(&["--protocol", "modbus-rtu-over-tcp"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let out = run(&[
        "register",
        "read",
        "--address",
        &sim.rtu_over_tcp,
        "--unit",
        "4",
        "--function",
        "4",
        "--start",
        "0",
        "--timeout-ms",
        "200",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("try --protocol modbus-rtu-over-tcp"),
        "{}",
        stderr(&out)
    );
}
