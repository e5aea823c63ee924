//! The command line as a user runs it: `check-config` with one mistake of each kind (exit code
//! 2 and a `FILE:LINE:COL: message` line), and `demo` with a real `mosquitto_sub` on its port
//! and, in its first minutes, the day's freezes, load curve and collection report.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_amr-gateway"))
}

const VALID: &str = r#"[gateway]
id = "gw"
data_dir = "data"

[mqtt]
host = "127.0.0.1"

[[bus]]
name = "b1"
protocol = "modbus-rtu"
device = "/dev/ttyUSB0"
baud = 9600

[[meter]]
id = "m1"
bus = "b1"
unit = 1
model = "eastron-sdm120"

[[meter]]
id = "m2"
bus = "b1"
unit = 2
model = "chint-dtsu666"
multiplier = 40
"#;

/// Runs `check-config` on `text`; returns (exit code, stderr, file path).
fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

/// `text` with `from` replaced by `to` must fail with `FILE:LINE:COL: ...` containing `needle`.
fn assert_problem(from: &str, to: &str, line_col: &str, needle: &str) {
    assert!(VALID.contains(from), "test bug: {from:?}");
    let (code, err, path) = check(&VALID.replacen(from, to, 1));
    assert_eq!(code, 2, "exit code for {to:?}; stderr:\n{err}");
    let prefix = format!("{path}:{line_col}: ");
    assert!(
        err.lines()
            .any(|l| l.starts_with(&prefix) && l.contains(needle)),
        "expected `{prefix}...{needle}...` in:\n{err}"
    );
}

#[test]
fn a_valid_file_passes() {
    let (code, err, _) = check(VALID);
    assert_eq!(code, 0, "{err}");
}

/// An old key of a shared rule keeps the file valid: exit 0, a warning naming its replacement.
#[test]
fn an_old_key_passes_with_a_warning() {
    let (code, err, path) = check(&format!("{VALID}\n[loss]\nstopped_current_a = 1.0\n"));
    assert_eq!(code, 0, "{err}");
    let warning = format!(
        "{path}:28:1: warning: `stopped_current_a` in [loss] is replaced by `min_current_a` in \
         [alarms.meter_stopped]"
    );
    assert!(err.lines().any(|l| l.starts_with(&warning)), "{err}");
}

#[test]
fn the_shipped_example_passes() {
    let out = bin()
        .args(["check-config", "--config", "config/example.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unknown_key_suggests_the_nearest() {
    assert_problem(
        "baud = 9600",
        "baudrate = 9600",
        "12:1",
        "did you mean `baud`",
    );
}

#[test]
fn wrong_type() {
    assert_problem("unit = 1\n", "unit = \"1\"\n", "17:8", "must be an integer");
}

#[test]
fn missing_required_key() {
    assert_problem(
        "host = \"127.0.0.1\"\n",
        "",
        "5:1",
        "missing required key `host`",
    );
}

#[test]
fn meter_on_unknown_bus() {
    assert_problem(
        "bus = \"b1\"\nunit = 2",
        "bus = \"b9\"\nunit = 2",
        "22:7",
        "not defined",
    );
}

#[test]
fn two_meters_with_one_unit_on_one_bus() {
    assert_problem("unit = 2", "unit = 1", "23:8", "m1");
}

#[test]
fn duplicate_meter_id() {
    assert_problem(
        "id = \"m2\"",
        "id = \"m1\"",
        "21:6",
        "duplicate meter id `m1`",
    );
}

#[test]
fn unknown_model_lists_the_available_ones() {
    assert_problem(
        "\"chint-dtsu666\"",
        "\"chint-dtsu999\"",
        "24:9",
        "eastron-sdm630",
    );
}

#[test]
fn a_multiplier_that_disagrees_with_the_ratios() {
    assert_problem(
        "multiplier = 40",
        "multiplier = 40\nct_ratio = 60",
        "25:14",
        "multiplier 40 disagrees with ct_ratio 60 × pt_ratio 1 = 60",
    );
    let (code, err, _) =
        check(&VALID.replacen("multiplier = 40", "ct_ratio = 40\npt_ratio = 1", 1));
    assert_eq!(code, 0, "{err}");
}

/// A client id shared by gateways makes them fight over the broker connection: warned.
#[test]
fn a_client_id_without_the_gateway_id_is_warned_about() {
    let text = VALID.replacen("[mqtt]\n", "[mqtt]\nclient_id = \"amr-gateway\"\n", 1);
    let (code, err, path) = check(&text);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.lines().any(|l| l.starts_with(&format!(
            "{path}:6:13: warning: client_id `amr-gateway` does not contain the gateway id `gw`"
        ))),
        "{err}"
    );
}

#[test]
fn impossible_serial_settings() {
    assert_problem("baud = 9600", "baud = 9601", "12:8", "not a standard rate");
    assert_problem(
        "baud = 9600",
        "baud = 9600\nparity = \"mark\"",
        "13:10",
        "parity",
    );
    assert_problem(
        "baud = 9600",
        "baud = 9600\nstop_bits = 3",
        "13:13",
        "stop_bits",
    );
}

#[test]
fn every_problem_is_listed() {
    let text = VALID
        .replacen("baud = 9600", "baud = 9601", 1)
        .replacen("\"chint-dtsu666\"", "\"nope\"", 1)
        .replacen("host = ", "hots = ", 1);
    let (code, err, _) = check(&text);
    assert_eq!(code, 2);
    let problems = err.lines().filter(|l| l.contains(".toml:")).count();
    assert!(problems >= 3, "{err}");
}

#[test]
fn run_refuses_a_bad_file_with_the_same_messages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, VALID.replacen("baud = 9600", "baud = 9601", 1)).unwrap();
    let out = bin().args(["run", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:12:8:", path.display())), "{err}");
}

#[test]
fn demo_publishes_readings_that_mosquitto_sub_receives() {
    let port = support::free_port();
    let mut demo = bin()
        .args(["demo", "--for", "15", "--mqtt-port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    support::wait_for_listener(port, Duration::from_secs(30));
    // mosquitto_sub exits after 6 reading messages.
    let deadline = Instant::now() + Duration::from_secs(90);
    let out = loop {
        let out = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "amr/+/reading/#",
                "-v",
            ])
            .args(["-C", "6", "-W", "60"])
            .output()
            .expect("mosquitto_sub (apt-get install mosquitto-clients)");
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "mosquitto_sub got:\n{text}");
    for l in &lines {
        let (topic, payload) = l.split_once(' ').unwrap();
        assert!(topic.starts_with("amr/demo-gw/reading/"), "{l}");
        let json: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert!(json["seq"].as_u64().is_some(), "{l}");
        assert!(
            json["values"]["energy_import_kwh"].as_f64().is_some(),
            "{l}"
        );
    }
    let status = demo.wait().unwrap();
    assert!(status.success(), "demo --for should exit 0");
    let mut summary = String::new();
    use std::io::Read;
    demo.stdout
        .take()
        .unwrap()
        .read_to_string(&mut summary)
        .unwrap();
    assert!(summary.contains("meters online"), "{summary}");
    assert!(
        summary.contains(
            "--for 15 ends before the freeze (about 15 s in) and the collection report \
             (about 75 s in): run with --for 90"
        ),
        "{summary}"
    );
}

/// The utility's day within the demo: its gateway's midnight comes 15 s after the start, so
/// every meter's daily freeze, the supply meter's load-curve blocks and, a minute after
/// midnight, the day's collection report show in the live summary. Stopped with SIGINT as
/// soon as the report is there (about 75 s).
#[test]
fn demo_shows_the_days_freezes_curve_and_collection_report() {
    use std::io::BufRead;
    let port = support::free_port();
    let mut demo = bin()
        .args(["demo", "--for", "150", "--mqtt-port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(140);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                let report = line.contains("COLLECTION ");
                lines.push(line);
                if report {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    // SAFETY: a signal to the child we started.
    unsafe { libc::kill(demo.id() as i32, libc::SIGINT) };
    let status = demo.wait().unwrap();
    lines.extend(rx.iter());
    reader.join().unwrap();
    let text = lines.join("\n");
    assert!(
        status.success(),
        "demo should stop cleanly on SIGINT\n{text}"
    );
    assert!(
        text.contains("midnight in 15 s") && text.contains("collection report at 00:01"),
        "{text}"
    );

    // Every meter's daily freeze at the zone's midnight, from the reads around it.
    let freezes: Vec<&String> = lines.iter().filter(|l| l.contains("FREEZE day")).collect();
    for meter in ["supply", "shop", "h11", "h12", "h13", "h22", "h23", "h24"] {
        let line = freezes
            .iter()
            .find(|l| l.contains(&format!(" 00:00:00 {meter}: ")))
            .unwrap_or_else(|| panic!("no freeze of {meter}:\n{text}"));
        assert!(line.contains("energy_import_kwh"), "{line}");
        // Extrapolated only when a slow machine gave the meter no read before midnight.
        assert!(
            line.contains("(interpolated)") || line.contains("(extrapolated)"),
            "{line}"
        );
    }
    let day = freezes[0]
        .split_whitespace()
        .nth(2)
        .expect("FREEZE day DATE");
    // A one-minute load-curve block of the supply meter from midnight.
    assert!(
        text.contains("curve supply 00:00:00–00:01:00: 1 point(s), at 00:00:00"),
        "{text}"
    );
    // The day's collection report after the freezes: every meter frozen.
    let report = lines
        .iter()
        .position(|l| l.contains("COLLECTION "))
        .unwrap_or_else(|| panic!("no collection report:\n{text}"));
    let first_freeze = lines.iter().position(|l| l.contains("FREEZE day")).unwrap();
    assert!(first_freeze < report, "{text}");
    assert!(
        lines[report].contains(&format!(
            "COLLECTION {day}: 8 of 8 meters with a daily freeze (100.0 %), failed: none"
        )),
        "{text}"
    );
    assert!(lines[report].contains("areas T1 8/8"), "{text}");
}
