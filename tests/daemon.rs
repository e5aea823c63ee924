//! The daemon's life as a process, against real parts: a real `amr-gateway run` reading a
//! simulated meter on a real pseudo-terminal, signalled with real signals.
//!
//! - A half-dead daemon is the worst failure under systemd: a task that panics, or a store
//!   commit that loses its batch, ends `run` with a clear error and a non-zero exit, so that it
//!   is restarted. The panics are injected through the debug build's `AMR_FAILPOINT` hook.
//! - SIGHUP reloads a valid configuration and keeps running on an invalid one.
//! - A second daemon on the same data directory is refused, naming the first one's pid.
//! - Logs written to a file carry no colour escapes.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::SimRuntime;

/// Upper bound for waiting on a slow shared machine; never a speed requirement.
const PATIENCE: Duration = Duration::from_secs(60);

use support::{ONE_METER_SIM as SIM, one_meter_gateway_config as gateway_config};

/// Runs the gateway with `failpoint` (if any) and stderr to a file; returns the exit status
/// (None: still running after `PATIENCE`, then killed) and the log.
fn run_until_exit(
    dir: &Path,
    failpoint: Option<&str>,
    term_after: Option<Duration>,
) -> (Option<i32>, String) {
    let config = gateway_config(dir);
    let log_path = dir.join("gateway.log");
    let mut child = start(&config, &log_path, failpoint);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if let Some(after) = term_after
            && started.elapsed() >= after
        {
            signal(&child, libc::SIGTERM);
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

/// `amr-gateway run` on `config`, stderr appended to `log_path`.
fn start(config: &Path, log_path: &Path, failpoint: Option<&str>) -> Daemon {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amr-gateway"));
    cmd.args(["run", "--config"])
        .arg(config)
        .env("AMR_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(f) = failpoint {
        cmd.env("AMR_FAILPOINT", f);
    }
    Daemon(cmd.spawn().expect("start amr-gateway run"))
}

/// A gateway process, SIGKILLed on drop: a failing test leaves none behind.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Daemon {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, signal) };
}

/// Waits until `log_path` holds `count` lines containing `text`; panics with the log if not.
fn wait_for_log(log_path: &Path, text: &str, count: usize) {
    let started = Instant::now();
    loop {
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        if log.matches(text).count() >= count {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "no {count} × {text:?} in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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

#[test]
fn sighup_reloads_a_valid_file_and_keeps_running_on_an_invalid_one() {
    let dir = tempfile::tempdir().unwrap();
    let sims = SimRuntime::new();
    let _sim = sims.start(SIM, "daemon-sim", dir.path());
    let config = gateway_config(dir.path());
    let log_path = dir.path().join("gateway.log");
    let mut child = start(&config, &log_path, None);
    wait_for_log(&log_path, "gateway starting", 1);

    // A valid edit: the gateway restarts with it.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("poll_interval_s = 1", "poll_interval_s = 2"),
    )
    .unwrap();
    signal(&child, libc::SIGHUP);
    wait_for_log(&log_path, "is valid; restarting the gateway with it", 1);
    wait_for_log(&log_path, "gateway starting", 2);

    // A broken edit: reported with its position, and the running gateway goes on.
    std::fs::write(
        &config,
        text.replace("poll_interval_s = 1", "poll_interval_s = \"often\""),
    )
    .unwrap();
    signal(&child, libc::SIGHUP);
    wait_for_log(&log_path, "keeping the running configuration", 1);
    wait_for_log(
        &log_path,
        "gateway.toml:16:19: `poll_interval_s` must be an integer",
        1,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the gateway stopped on a bad reload"
    );

    signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert_eq!(log.matches("gateway starting").count(), 2, "log:\n{log}");
}

#[test]
fn a_second_daemon_on_one_data_dir_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let sims = SimRuntime::new();
    let _sim = sims.start(SIM, "daemon-sim", dir.path());
    let config = gateway_config(dir.path());
    let first_log = dir.path().join("first.log");
    let mut first = start(&config, &first_log, None);
    wait_for_log(&first_log, "gateway starting", 1);

    let second_log = dir.path().join("second.log");
    let mut second = start(&config, &second_log, None);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the second daemon kept running"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(&second_log).unwrap();
    assert_eq!(status.code(), Some(1), "log:\n{log}");
    assert!(
        log.contains(&format!(
            "another amr-gateway (pid {}) is already running on data_dir",
            first.id()
        )),
        "log:\n{log}"
    );
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first daemon stopped"
    );
    signal(&first, libc::SIGTERM);
    assert_eq!(first.wait().unwrap().code(), Some(0));
}
