//! A full disk loses nothing and the store comes back by itself, against real parts: a real
//! `amr-gateway run` with its data_dir on an 8 MiB tmpfs the test mounts (root only; skipped
//! with a message otherwise), reading simulated meters and publishing to a real mosquitto. The
//! test fills the filesystem, keeps it full, frees it, and checks that every `seq` arrived,
//! every meter's readings have no hole, acknowledgements made while full were recorded later (no
//! delivered message is left in the outbox), the log has a handful of lines about it, and
//! `disk_full` was raised and cleared. Then it fills the disk again and stops the gateway while
//! readings wait in memory: the exit is non-zero and the log says what was not stored.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{Mosquitto, Received, SimRuntime, Subscriber};

/// Upper bound for waiting on a slow shared machine; never a speed requirement.
const PATIENCE: Duration = Duration::from_secs(120);

const SIM: &str = r#"
[[bus]]
name = "rs485"
link = "ttyRS485"
baud = 38400
turnaround_ms = 2

[[meter]]
bus = "rs485"
unit = 1
model = "chint-dtsu666"

[[meter]]
bus = "rs485"
unit = 2
model = "chint-dtsu666"

[[meter]]
bus = "rs485"
unit = 3
model = "chint-dtsu666"
"#;

fn write_config(dir: &Path, port: u16) -> PathBuf {
    let mut text = format!(
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
baud = 38400
timeout_ms = 300
poll_interval_s = 1
"#
    );
    for unit in 1..=3 {
        text += &format!(
            "[[meter]]\nid = \"m{unit}\"\nbus = \"rs485\"\nunit = {unit}\nmodel = \"chint-dtsu666\"\n"
        );
    }
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Unmounts on drop.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path) -> Option<Tmpfs> {
    std::fs::create_dir_all(at).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(at)
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Tmpfs(at.to_path_buf()))
}

/// Writes `filler` until the filesystem refuses (appending to what is there).
fn fill(filler: &Path) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(filler)
        .unwrap();
    let chunk = vec![0x5au8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

fn start_gateway(config: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.parent().unwrap().join("gateway.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_amr-gateway"))
        .args(["run", "--config"])
        .arg(config)
        .env("AMR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start amr-gateway run")
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap()
}

fn disk_full(received: &[Received], state: &str) -> usize {
    received
        .iter()
        .filter(|(t, j)| t == "amr/gw1/alarm/disk_full/gw1" && j["state"] == state)
        .count()
}

/// Messages in the outbox older than `age_s`, read-only beside the running gateway.
fn stale_outbox_rows(db: &Path, age_s: i64) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let cutoff = amr_gateway::clock::now_ms() - age_s * 1000;
    conn.query_row(
        "SELECT COUNT(*) FROM outbox WHERE created_ms < ?1",
        [cutoff],
        |r| r.get(0),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_small_disk_loses_nothing_and_the_store_comes_back_by_itself() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: mounting an 8 MiB tmpfs needs root; run the test as root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(_tmpfs) = mount_tmpfs(&data) else {
        println!("SKIPPED: cannot mount a tmpfs here (no CAP_SYS_ADMIN?)");
        return;
    };
    let filler = data.join("filler");
    let db = data.join("amr-gateway.db");
    let broker = Mosquitto::start();
    let sub = Subscriber::start(broker.port, "check-disk", "amr/gw1/#").await;
    let sims = SimRuntime::new();
    let _sim = sims.start(SIM, "sim.toml", dir.path());
    let config = write_config(dir.path(), broker.port);
    let mut gateway = start_gateway(&config);
    let tail = || support::log_tail(dir.path(), 60);

    let readings = |r: &[Received]| support::seqs_on(r, "/reading/").len();
    assert!(
        sub.wait_until(PATIENCE, |r| readings(r) >= 10)
            .await
            .is_some(),
        "no readings\n{}",
        tail()
    );
    assert!(
        data.join(amr_gateway::store::RESERVE_FILE).exists(),
        "space is kept in reserve"
    );

    // Fill the filesystem, and keep it full (the gateway releases its reserve: fill that too).
    fill(&filler);
    assert!(
        sub.wait_until(PATIENCE, |r| disk_full(r, "raised") >= 1)
            .await
            .is_some(),
        "no disk_full alarm\n{}",
        tail()
    );
    for _ in 0..40 {
        fill(&filler);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(gateway.try_wait().unwrap().is_none(), "the gateway runs on");

    // Free it: everything held comes through, the alarm clears.
    std::fs::remove_file(&filler).unwrap();
    assert!(
        sub.wait_until(PATIENCE, |r| disk_full(r, "cleared") >= 1)
            .await
            .is_some(),
        "disk_full not cleared\n{}",
        tail()
    );
    // Some readings after the clear, then: nothing delivered is left in the outbox.
    let mark = readings(&sub.received());
    assert!(
        sub.wait_until(PATIENCE, |r| readings(r) >= mark + 10)
            .await
            .is_some()
    );
    let mut stale = i64::MAX;
    for _ in 0..120 {
        stale = stale_outbox_rows(&db, 20);
        if stale == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        stale,
        0,
        "delivered messages left in the outbox\n{}",
        tail()
    );

    let status = terminate(&mut gateway);
    assert!(status.success(), "{status:?}\n{}", tail());

    // Every seq arrived (duplicates allowed, no hole), and no meter has a hole in its readings.
    let got = sub.received();
    let mut seqs = support::seqs_on(&got, "/");
    seqs.sort_unstable();
    seqs.dedup();
    let holes: Vec<(u64, u64)> = seqs
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(holes.is_empty(), "seq holes: {holes:?}");
    for m in ["m1", "m2", "m3"] {
        let mut ts: Vec<i64> = got
            .iter()
            .filter(|(t, _)| *t == format!("amr/gw1/reading/{m}"))
            .map(|(_, j)| support::ts_field(j, "ts"))
            .collect();
        ts.sort_unstable();
        ts.dedup();
        let worst = ts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        // Polled every second; a slow shared machine may stretch that, a lost reading leaves a
        // hole of the whole time the disk was full (10 s and more).
        assert!(worst < 8_000, "{m}: a hole of {worst} ms in its readings");
    }
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap();
    let full_lines = log.lines().filter(|l| l.contains("full")).count();
    assert!(
        full_lines <= 6,
        "a full disk gives a handful of lines, not one per batch: {full_lines}\n{log}"
    );
    assert!(
        !log.contains("ERROR"),
        "no error lines for a full disk:\n{log}"
    );

    // Full again, and a stop while readings wait in memory: said, and a non-zero exit.
    let mut gateway = start_gateway(&config);
    let before = readings(&sub.received());
    assert!(
        sub.wait_until(PATIENCE, |r| readings(r) >= before + 5)
            .await
            .is_some()
    );
    fill(&filler);
    assert!(
        sub.wait_until(PATIENCE, |r| disk_full(r, "raised") >= 2)
            .await
            .is_some(),
        "no second disk_full alarm\n{}",
        tail()
    );
    for _ in 0..20 {
        fill(&filler);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let status = terminate(&mut gateway);
    assert!(
        !status.success(),
        "a stop that loses held readings must fail"
    );
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap();
    assert!(log.contains("held in memory were not stored"), "{log}");
}
