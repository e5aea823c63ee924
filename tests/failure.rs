//! A half-dead daemon is the worst failure under systemd: a task that panics, or a store commit
//! that loses its batch, must end `run` with a clear error and a non-zero exit, so that it is
//! restarted. The panics are injected through the debug build's `AMR_FAILPOINT` hook into a real
//! `amr-gateway run` process reading a simulated meter on a real pseudo-terminal.
//!
//! Also here: logs written to a file carry no colour escapes.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::SimRuntime;

/// Upper bound for waiting on a slow shared machine; never a speed requirement.
const PATIENCE: Duration = Duration::from_secs(60);

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

fn gateway_config(dir: &Path) -> PathBuf {
    // Nothing listens on the broker port: an unreachable broker is normal and must not matter.
    let port = support::free_port();
    let text = format!(
        r#"
[gateway]
id = "gw1"
data_dir = "data"

[mqtt]
host = "127.0.0.1"
port = {port}

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
"#
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the gateway with `failpoint` (if any) and stderr to a file; returns the exit status
/// (None: still running after `PATIENCE`, then killed) and the log.
fn run_until_exit(
    dir: &Path,
    failpoint: Option<&str>,
    term_after: Option<Duration>,
) -> (Option<i32>, String) {
    let config = gateway_config(dir);
    let log_path = dir.join("gateway.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amr-gateway"));
    cmd.args(["run", "--config"])
        .arg(&config)
        .env("AMR_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(f) = failpoint {
        cmd.env("AMR_FAILPOINT", f);
    }
    let mut child = cmd.spawn().expect("start amr-gateway run");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if let Some(after) = term_after
            && started.elapsed() >= after
        {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            break Some(child.wait().unwrap());
        }
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    (status.and_then(|s| s.code()), log)
}

#[test]
fn a_store_commit_that_panics_ends_run_non_zero_naming_the_lost_batch() {
    let dir = tempfile::tempdir().unwrap();
    let sims = SimRuntime::new();
    let _sim = sims.start(SIM, "failure-sim", dir.path());
    let (code, log) = run_until_exit(dir.path(), Some("store-commit"), None);
    assert_eq!(code, Some(1), "exit code; log:\n{log}");
    assert!(
        log.contains("a store commit panicked: failpoint store-commit")
            && log.contains("readings was not stored")
            && log.contains("stopped the gateway so that it is restarted"),
        "the error names the lost batch; log:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "colour escapes in a log file:\n{log}"
    );
}

#[test]
fn a_panicking_task_ends_run_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let sims = SimRuntime::new();
    let _sim = sims.start(SIM, "failure-sim", dir.path());
    let (code, log) = run_until_exit(dir.path(), Some("writer"), None);
    assert_eq!(code, Some(1), "exit code; log:\n{log}");
    assert!(
        log.contains("the store writer panicked: failpoint writer"),
        "the error names the task; log:\n{log}"
    );
    // The others were stopped in order, not abandoned.
    assert!(log.contains("amr-gateway: "), "log:\n{log}");
}

#[test]
fn a_clean_stop_exits_zero_and_a_log_file_has_no_colour() {
    let dir = tempfile::tempdir().unwrap();
    let sims = SimRuntime::new();
    let _sim = sims.start(SIM, "failure-sim", dir.path());
    let (code, log) = run_until_exit(dir.path(), None, Some(Duration::from_secs(4)));
    assert_eq!(code, Some(0), "exit code; log:\n{log}");
    assert!(
        log.contains("gateway starting") && log.contains("gateway stopped"),
        "log:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "colour escapes in a log file:\n{log}"
    );
}
