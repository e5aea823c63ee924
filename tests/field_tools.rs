//! The field tools as a user runs them: `amr-gateway simulate` in one process, and `read`,
//! `scan`, `status` (and `run`) as separate processes against its pty and TCP port, checking
//! exit codes and what they print.

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

/// `amr-gateway simulate` with an RS-485 bus on a pty (units 5: SDM120, 7: DTSU666) and a
/// Modbus TCP bus (unit 3: SDM630).
struct Simulator {
    dir: tempfile::TempDir,
    link: PathBuf,
    tcp: String,
    _process: Process,
}

fn simulate() -> Simulator {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
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

[[meter]]
bus = "serial-server"
unit = 3
model = "eastron-sdm630"
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
    Simulator {
        link,
        tcp: format!("127.0.0.1:{port}"),
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
    assert!(table.starts_with("2 of 10 unit id(s) answered"), "{table}");
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
