//! A damaged store cannot keep the gateway down, against real parts: a real `amr-gateway run`
//! (reading a simulated meter on a real pseudo-terminal, publishing to a real mosquitto) on a
//! store file damaged by the test — truncated to half, or with 4 KiB of random bytes in the
//! middle — at start and while running. The gateway runs on, raises `store_recovered` naming
//! where the old file went, the old file is kept, and `seq` continues above the old counter.

mod support;

use amr_gateway::config::StoreConfig;
use amr_gateway::model::Reading;
use amr_gateway::store::{Batch, Message, MetaKey, Store};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{Mosquitto, Received, SimRuntime, Subscriber};

/// Upper bound for waiting on a slow shared machine; never a speed requirement.
const PATIENCE: Duration = Duration::from_secs(90);

/// The `seq` the prepared store had given out last.
const OLD_SEQ: u64 = 7_000;

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
"#;

/// The one-meter gateway configuration of the daemon tests, its broker on `port`.
fn write_config(dir: &Path, port: u16) -> PathBuf {
    support::one_meter_gateway_config_on(dir, port)
}

/// A store of a few MiB of history (old data fills the middle of the file), a few unsent
/// messages and the `seq` counter at [`OLD_SEQ`].
fn prepare_store(db: &Path) {
    let cfg = StoreConfig {
        history_days: 3650,
        max_size_mb: 1024,
        commit_window_ms: 0,
    };
    let mut store = Store::open(db, &cfg).unwrap();
    store
        .set_meta(&MetaKey::LastSeq, &(OLD_SEQ - 3).to_string())
        .unwrap();
    let now = amr_gateway::clock::now_ms();
    for chunk in 0..20 {
        let readings: Vec<Reading> = (0..500)
            .map(|i| Reading {
                meter: format!("old{}", i % 7),
                ts_ms: now - 86_400_000 + (chunk * 500 + i) as i64,
                values: (0..8)
                    .map(|q| (format!("voltage_l{q}_v"), 230.0 + q as f64))
                    .collect(),
            })
            .collect();
        store
            .commit(&Batch {
                readings,
                ..Default::default()
            })
            .unwrap();
    }
    let messages = (0..3)
        .map(|i| Message {
            topic: format!("amr/gw1/reading/old{i}"),
            payload: serde_json::json!({"meter": format!("old{i}"), "values": {}}).into(),
            qos: 1,
            retain: false,
            sequenced: true,
        })
        .collect();
    store
        .commit(&Batch {
            messages,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(store.last_seq().unwrap(), OLD_SEQ);
}

/// Overwrites 4 KiB in the middle of `db` with pseudo-random bytes, across a page boundary.
fn scribble_middle(db: &Path) {
    let len = std::fs::metadata(db).unwrap().len();
    let at = (len / 2) / 4096 * 4096 + 2048;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&bytes).unwrap();
    f.sync_all().unwrap();
}

fn truncate_half(db: &Path) {
    let len = std::fs::metadata(db).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    f.set_len(len / 2).unwrap();
}

fn start_gateway(config: &Path, check_every_s: Option<u64>) -> Child {
    let log = std::fs::File::create(config.parent().unwrap().join("gateway.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amr-gateway"));
    cmd.args(["run", "--config"])
        .arg(config)
        .env("AMR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(s) = check_every_s {
        cmd.env("AMR_STORE_CHECK_EVERY_S", s.to_string());
    }
    cmd.spawn().expect("start amr-gateway run")
}

fn recovered_alarm(received: &[Received]) -> Option<serde_json::Value> {
    received
        .iter()
        .find(|(t, j)| t == "amr/gw1/alarm/store_recovered/gw1" && j["state"] == "raised")
        .map(|(_, j)| j.clone())
}

/// Checks the alarm, the kept file and that readings keep coming with `seq` above `floor`.
async fn check_recovered(sub: &Subscriber, dir: &Path, floor: u64, gateway: &mut Child) {
    let got = sub
        .wait_until(PATIENCE, |r| recovered_alarm(r).is_some())
        .await;
    let Some(got) = got else {
        panic!("no store_recovered alarm\n{}", support::log_tail(dir, 40));
    };
    let alarm = recovered_alarm(&got).unwrap();
    let seq = alarm["seq"].as_u64().unwrap();
    assert!(seq > floor, "seq went backwards: {seq} <= {floor}: {alarm}");
    let moved = PathBuf::from(alarm["moved_to"].as_str().unwrap());
    assert!(
        moved.exists(),
        "the damaged file is kept at {}",
        moved.display()
    );
    assert!(
        moved
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("amr-gateway.db.damaged-")
    );
    assert!(alarm["cause"].as_str().is_some_and(|c| !c.is_empty()));
    // The gateway runs on: readings of the meter keep coming, above the alarm's seq.
    let more = sub
        .wait_until(PATIENCE, |r| {
            r.iter().any(|(t, j)| {
                t == "amr/gw1/reading/m1" && j["seq"].as_u64().is_some_and(|s| s > seq + 2)
            })
        })
        .await;
    assert!(
        more.is_some(),
        "no reading after the recovery\n{}",
        support::log_tail(dir, 40)
    );
    assert!(
        gateway.try_wait().unwrap().is_none(),
        "the gateway is still running"
    );
    let reading_seqs = support::seqs_on(&sub.received(), "/reading/m1");
    assert!(
        reading_seqs.iter().all(|s| *s > OLD_SEQ),
        "{reading_seqs:?}"
    );
    // The new store is sound.
    let db = dir.join("data/amr-gateway.db");
    let out = Command::new("sqlite3")
        .arg(&db)
        .arg("PRAGMA quick_check")
        .output();
    if let Ok(out) = out {
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    }
}

async fn damaged_at_start(damage: fn(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("amr-gateway.db");
    prepare_store(&db);
    damage(&db);
    let damaged = std::fs::read(&db).unwrap();
    let broker = Mosquitto::start();
    let sub = Subscriber::start(broker.port, "check-start", "amr/gw1/#").await;
    let sims = SimRuntime::new();
    let _sim = sims.start(SIM, "sim.toml", dir.path());
    let config = write_config(dir.path(), broker.port);
    let mut gateway = start_gateway(&config, None);
    check_recovered(&sub, dir.path(), OLD_SEQ, &mut gateway).await;
    // The old file is kept as it was (renamed, never modified).
    let kept: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".damaged-"))
        .filter(|e| !e.file_name().to_string_lossy().ends_with("-wal"))
        .filter(|e| !e.file_name().to_string_lossy().ends_with("-shm"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let _ = gateway.kill();
    let _ = gateway.wait();
    assert_eq!(
        std::fs::read(kept[0].path()).unwrap().len(),
        damaged.len(),
        "the damaged file is kept whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_truncated_to_half_at_start_is_moved_aside_and_the_gateway_runs_on() {
    damaged_at_start(truncate_half).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_random_bytes_in_the_middle_at_start_is_moved_aside() {
    damaged_at_start(scribble_middle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_while_running_is_found_and_the_store_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("amr-gateway.db");
    prepare_store(&db);
    let broker = Mosquitto::start();
    let sub = Subscriber::start(broker.port, "check-running", "amr/gw1/#").await;
    let sims = SimRuntime::new();
    let _sim = sims.start(SIM, "sim.toml", dir.path());
    let config = write_config(dir.path(), broker.port);
    let mut gateway = start_gateway(&config, Some(2));
    // Running and publishing readings.
    let got = sub
        .wait_until(PATIENCE, |r| support::seqs_on(r, "/reading/m1").len() >= 3)
        .await;
    assert!(
        got.is_some(),
        "no readings\n{}",
        support::log_tail(dir.path(), 40)
    );
    let before = support::seqs_on(&sub.received(), "/")
        .into_iter()
        .max()
        .unwrap();
    assert!(before > OLD_SEQ);
    assert!(recovered_alarm(&sub.received()).is_none());
    scribble_middle(&db);
    check_recovered(&sub, dir.path(), before, &mut gateway).await;
    let _ = gateway.kill();
    let _ = gateway.wait();
}

#[test]
fn an_unwritable_data_dir_is_named_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    // A data_dir that is a file.
    std::fs::write(dir.path().join("data"), "").unwrap();
    let config = write_config(dir.path(), support::free_port());
    let out = Command::new(env!("CARGO_BIN_EXE_amr-gateway"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("data_dir") && err.contains("data") && err.contains("not a directory"),
        "{err}"
    );
}

#[test]
fn a_foreign_sqlite_file_at_the_store_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("amr-gateway.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL);")
            .unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    let config = write_config(dir.path(), support::free_port());
    let out = Command::new(env!("CARGO_BIN_EXE_amr-gateway"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not an amr-gateway store"), "{err}");
    assert!(err.lines().count() < 10, "a short message: {err}");
    assert_eq!(std::fs::read(&db).unwrap(), before);
    assert!(!data.join("amr-gateway.db-wal").exists());
}
