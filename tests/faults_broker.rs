//! The broker's faults seen by the whole gateway process, against real processes: a real
//! `amr-gateway run` reading four simulated meters on a real pseudo-terminal while its real
//! mosquitto is SIGKILLed and restarted on the same port (three times, after random pauses
//! from a seeded generator), then SIGSTOPped for longer than two keep-alives — a half-open link:
//! the TCP connection stays up but nothing answers — and SIGCONTed. Readings flow all along;
//! at the end a subscriber (QoS 1, persistent session) has every `seq`, none reused with other
//! content, and the store passes `PRAGMA integrity_check`. (`tests/uplink.rs` kills the broker
//! under the uplink alone; this is the daemon.)

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{FaultRng, Gateway, Mosquitto, SeqLedger, SimRuntime, Subscriber};

/// Upper bound for waiting on a slow shared machine; never a speed requirement.
const PATIENCE: Duration = Duration::from_secs(120);

/// The gateway's MQTT keep-alive; the broker is stopped for longer than twice this.
const KEEP_ALIVE_S: u64 = 5;

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
[[meter]]
bus = "rs485"
unit = 2
model = "eastron-sdm120"
[[meter]]
bus = "rs485"
unit = 3
model = "eastron-sdm630"
[[meter]]
bus = "rs485"
unit = 4
model = "eastron-sdm120"
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
keep_alive_s = {KEEP_ALIVE_S}
reconnect_max_s = 1

[[bus]]
name = "rs485"
protocol = "modbus-rtu"
device = "ttyRS485"
baud = 19200
timeout_ms = 300
poll_interval_s = 1
"#
    );
    for (unit, model) in [
        (1, "eastron-sdm120"),
        (2, "eastron-sdm120"),
        (3, "eastron-sdm630"),
        (4, "eastron-sdm120"),
    ] {
        text += &format!(
            "\n[[meter]]\nid = \"m{unit}\"\nbus = \"rs485\"\nunit = {unit}\nmodel = \"{model}\"\n"
        );
    }
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits until readings have arrived with a `seq` above `above`.
async fn flowing(sub: &Subscriber, above: u64, dir: &Path, what: &str) -> u64 {
    let got = sub
        .wait_until(PATIENCE, |r| {
            support::seqs_on(r, "/reading/").iter().any(|s| *s > above)
        })
        .await;
    assert!(
        got.is_some(),
        "no readings above seq {above} {what}\n{}",
        support::log_tail(dir, 40)
    );
    SeqLedger::of(&sub.received()).max()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_stopped_while_readings_flow_loses_no_seq() {
    let mut rng = FaultRng::from_env("broker_faults");
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start_persistent();
    let since = std::time::SystemTime::now();
    let sub = Subscriber::start(broker.port, "fault-broker", "amr/gw1/#").await;
    broker.wait_saved(since);
    let sims = SimRuntime::new();
    let _sim = sims.start(SIM, "sim.toml", dir.path());
    let config = write_config(dir.path(), broker.port);
    let mut gateway = Gateway::start(&config, "gateway.log");
    let mut high = flowing(&sub, 5, dir.path(), "at the start").await;

    // SIGKILL and a restart on the same port, three times.
    for round in 0..3 {
        let up = rng.between(500, 3_000);
        tokio::time::sleep(Duration::from_millis(up)).await;
        broker.kill();
        let down = rng.between(500, 4_000);
        tokio::time::sleep(Duration::from_millis(down)).await;
        broker.restart();
        eprintln!("broker kill {round}: after {up} ms up, {down} ms down");
        high = flowing(
            &sub,
            high,
            dir.path(),
            &format!("after broker kill {round}"),
        )
        .await;
    }

    // SIGSTOP: a half-open link for longer than two keep-alives, then SIGCONT.
    broker.pause();
    let stopped = Duration::from_secs(2 * KEEP_ALIVE_S + 3);
    tokio::time::sleep(stopped).await;
    broker.resume();
    eprintln!("broker stopped for {stopped:?}");
    flowing(&sub, high, dir.path(), "after SIGSTOP/SIGCONT").await;
    assert!(
        gateway.exited().is_none(),
        "the gateway ran through it\n{}",
        support::log_tail(dir.path(), 40)
    );

    // Everything stored so far arrives; then a stop, and the store is checked.
    let target = SeqLedger::of(&sub.received()).max() + 10;
    let complete = sub
        .wait_until(PATIENCE, |r| {
            let l = SeqLedger::of(r);
            l.max() >= target && l.missing(l.max()).is_empty()
        })
        .await;
    gateway.terminate();
    let ledger = SeqLedger::of(&sub.received());
    let (integrity, last, pending) = support::store_after(&dir.path().join("data/amr-gateway.db"));
    assert_eq!(integrity, "ok");
    assert!(
        ledger.reused.is_empty(),
        "seq reused with other content: {:?}",
        &ledger.reused[..ledger.reused.len().min(3)]
    );
    let lost: Vec<u64> = ledger
        .missing(last)
        .into_iter()
        .flat_map(|(a, b)| a..=b)
        .filter(|s| !pending.contains(s))
        .collect();
    assert!(
        lost.is_empty(),
        "seqs neither received nor in the outbox (first 10): {:?}\n{}",
        &lost[..lost.len().min(10)],
        support::log_tail(dir.path(), 40)
    );
    assert!(
        complete.is_some(),
        "not delivered up to seq {target}; gaps {:?}",
        ledger.missing(ledger.max())
    );
    eprintln!(
        "seq 1..={last}: {} received ({} again with the same content), {} still in the outbox",
        ledger.first.len(),
        ledger.duplicates,
        pending.len()
    );
}
