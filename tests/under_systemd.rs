//! What systemd sees of a running gateway.
//!
//! The notify protocol (`sd_notify(3)`): the test listens on a Unix datagram socket of its
//! own, hands it to a real `amr-gateway run` process as `NOTIFY_SOCKET` with a watchdog
//! interval in `WATCHDOG_USEC`, and reads what arrives: READY=1, a STATUS= line, WATCHDOG=1
//! keep-alives, STOPPING=1 on SIGTERM — and no keep-alive while the store writer is made to
//! hang (the debug build's `AMR_FAILPOINT=writer-hang`).
//!
//! The journal: with `JOURNAL_STREAM` naming its stderr (as systemd sets it), every log line
//! starts with its syslog priority; with `AMR_LOG_FORMAT=json` every line is a JSON object.
//!
//! The gateway reads a simulated meter on a real pseudo-terminal.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::SimRuntime;

/// Upper bound for waiting on a slow shared machine; never a speed requirement.
const PATIENCE: Duration = Duration::from_secs(60);
/// The watchdog interval handed to the gateway: keep-alives every second.
const WATCHDOG_USEC: &str = "2000000";

use support::{ONE_METER_SIM as SIM, one_meter_gateway_config as gateway_config};

/// A notify socket the test listens on, and the gateway started with it.
struct Supervised {
    socket: UnixDatagram,
    child: Child,
    log: PathBuf,
}

impl Supervised {
    fn start(dir: &Path, failpoint: Option<&str>) -> Supervised {
        Self::start_with(dir, failpoint, false, None)
    }

    /// `journal`: `JOURNAL_STREAM` names the log file, as systemd names the journal's stream.
    fn start_with(
        dir: &Path,
        failpoint: Option<&str>,
        journal: bool,
        log_format: Option<&str>,
    ) -> Supervised {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        let config = gateway_config(dir);
        let log = dir.join("gateway.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_amr-gateway"));
        cmd.args(["run", "--config"])
            .arg(&config)
            .env("AMR_LOG", "info")
            .env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", WATCHDOG_USEC)
            .env_remove("WATCHDOG_PID")
            .env_remove("AMR_FAILPOINT")
            .env_remove("JOURNAL_STREAM")
            .env_remove("AMR_LOG_FORMAT")
            .stdout(Stdio::null());
        if journal {
            use std::os::unix::fs::MetadataExt;
            let meta = log_file.metadata().unwrap();
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        }
        if let Some(f) = log_format {
            cmd.env("AMR_LOG_FORMAT", f);
        }
        cmd.stderr(log_file);
        if let Some(f) = failpoint {
            cmd.env("AMR_FAILPOINT", f);
        }
        let child = cmd.spawn().expect("start amr-gateway run");
        Supervised { socket, child, log }
    }

    /// The next datagram's lines (`KEY=VALUE`), or `None` once `deadline` passed.
    fn next(&self, deadline: Instant) -> Option<Vec<String>> {
        let left = deadline.checked_duration_since(Instant::now())?;
        self.socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        Some(text.lines().map(str::to_string).collect())
    }

    /// Every line received until `deadline`.
    fn collect_until(&self, deadline: Instant) -> Vec<(Instant, String)> {
        let mut got = Vec::new();
        while let Some(lines) = self.next(deadline) {
            let at = Instant::now();
            got.extend(lines.into_iter().map(|l| (at, l)));
        }
        got
    }

    /// Waits for a line `done` accepts; everything received up to it.
    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        while let Some(lines) = self.next(deadline) {
            let found = lines.iter().any(|l| done(l));
            seen.extend(lines);
            if found {
                return seen;
            }
        }
        panic!(
            "no {what} within {PATIENCE:?}; received {seen:?}; log:\n{}",
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(&mut self) -> Option<i32> {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ready_status_and_keepalives_arrive_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let sims = SimRuntime::new();
    let _sim = sims.start(SIM, "notify-sim", dir.path());
    let mut gw = Supervised::start(dir.path(), None);

    let before_ready = gw.wait_for("READY=1", |l| l == "READY=1");
    assert!(
        !before_ready.iter().any(|l| l == "WATCHDOG=1"),
        "a keep-alive before READY=1: {before_ready:?}"
    );
    let mut status: Vec<String> = before_ready
        .iter()
        .filter(|l| l.starts_with("STATUS="))
        .cloned()
        .collect();
    assert!(
        status
            .first()
            .is_some_and(|s| s.starts_with("STATUS=meters online ") && s.contains("backlog")),
        "READY=1 comes with the status line: {before_ready:?}"
    );

    // Keep-alives keep coming (every second here), and the status line follows the meter
    // going online (the simulated meter answers within a poll or two).
    let mut keepalives = 0;
    let deadline = Instant::now() + PATIENCE;
    while keepalives < 3 || !status.iter().any(|s| s.contains("meters online 1/1")) {
        let Some(lines) = gw.next(deadline) else {
            panic!(
                "{keepalives} keep-alives, status {status:?} within {PATIENCE:?}; log:\n{}",
                gw.log()
            );
        };
        for l in lines {
            if l == "WATCHDOG=1" {
                keepalives += 1;
            } else if l.starts_with("STATUS=") {
                status.push(l);
            }
        }
    }
    assert!(
        status.last().unwrap().ends_with("broker not connected"),
        "nothing listens on the broker port: {status:?}"
    );

    let code = gw.terminate();
    let after: Vec<String> = gw
        .collect_until(Instant::now() + Duration::from_millis(200))
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert!(
        after.iter().any(|l| l == "STOPPING=1"),
        "STOPPING=1 on SIGTERM: {after:?}"
    );
    assert_eq!(code, Some(0), "log:\n{}", gw.log());
}

#[test]
fn no_keepalive_while_the_store_writer_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let sims = SimRuntime::new();
    let _sim = sims.start(SIM, "notify-sim", dir.path());
    let gw = Supervised::start(dir.path(), Some("writer-hang"));

    gw.wait_for("READY=1", |l| l == "READY=1");
    // The writer hangs after its first iteration; at most the first keep-alive can still
    // count it as progress. Then none for many watchdog periods.
    let ready = Instant::now();
    let got = gw.collect_until(ready + Duration::from_secs(8));
    let late: Vec<_> = got
        .iter()
        .filter(|(at, l)| l == "WATCHDOG=1" && *at > ready + Duration::from_secs(3))
        .collect();
    assert!(
        late.is_empty(),
        "keep-alives while the writer hangs: {got:?}; log:\n{}",
        gw.log()
    );
    let log = gw.log();
    assert!(
        log.contains("no progress from the store writer"),
        "the withheld keep-alive is logged, naming the task; log:\n{log}"
    );
}

/// Runs the gateway a few seconds (it logs its start, the meter, its stop) and returns its log.
fn log_of_a_short_run(journal: bool, log_format: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let sims = SimRuntime::new();
    let _sim = sims.start(SIM, "notify-sim", dir.path());
    let mut gw = Supervised::start_with(dir.path(), None, journal, log_format);
    gw.wait_for("READY=1", |l| l == "READY=1");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(gw.terminate(), Some(0), "log:\n{}", gw.log());
    gw.log()
}

#[test]
fn under_journald_every_line_starts_with_its_syslog_priority() {
    let log = log_of_a_short_run(true, None);
    assert!(
        log.lines()
            .any(|l| l.starts_with("<6>") && l.contains("gateway starting")),
        "info lines are <6>:\n{log}"
    );
    for line in log.lines() {
        let priority = line
            .strip_prefix('<')
            .and_then(|rest| rest.split_once('>'))
            .map(|(p, _)| p);
        assert!(
            matches!(priority, Some("3" | "4" | "6" | "7")),
            "a line without a syslog priority: `{line}`; log:\n{log}"
        );
    }
    assert!(
        !log.contains('\u{1b}'),
        "colour escapes for journald:\n{log}"
    );
}

#[test]
fn json_lines_when_asked() {
    let log = log_of_a_short_run(false, Some("json"));
    let mut messages = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): `{line}`; log:\n{log}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        messages.push(v["message"].as_str().unwrap_or_default().to_string());
    }
    assert!(
        messages.iter().any(|m| m == "gateway starting")
            && messages.iter().any(|m| m == "gateway stopped"),
        "{messages:?}"
    );
    // Under journald too, behind the priority.
    let log = log_of_a_short_run(true, Some("json"));
    let line = log
        .lines()
        .find(|l| l.contains("gateway starting"))
        .unwrap_or_else(|| panic!("log:\n{log}"));
    let json = line
        .strip_prefix("<6>")
        .unwrap_or_else(|| panic!("`{line}`"));
    serde_json::from_str::<serde_json::Value>(json).unwrap_or_else(|e| panic!("{e}: `{line}`"));
}
