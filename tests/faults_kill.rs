//! SIGKILL of the gateway at random moments, against real processes: `amr-gateway run` reading
//! four simulated meters on a real pseudo-terminal and publishing to a real mosquitto, killed
//! again and again (10 times here, 50 in the `--ignored` long run) at moments drawn from a
//! seeded generator (the seed is printed; `AMR_FAULT_SEED=N` replays a run). The kills fall
//! while a backlog of 60,000 stored messages drains, while readings flow, while the broker is
//! down and while the backlog of that outage drains. A subscriber (QoS 1, persistent session)
//! checks every `seq` at the end: none missing (each one received, or still in the outbox),
//! none reused with other content; the store passes `PRAGMA integrity_check`.

mod support;

use amr_gateway::config::StoreConfig;
use amr_gateway::store::{Batch, Message, Store};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{FaultRng, Gateway, Mosquitto, SeqLedger, SimRuntime, Subscriber};

/// Upper bound for waiting on a slow shared machine; never a speed requirement.
const PATIENCE: Duration = Duration::from_secs(120);

/// Messages waiting in the outbox before the first start, and added again during the broker
/// outage (hours of an outage, stored).
const BACKLOG: u64 = 60_000;

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
model = "eastron-sdm120"
[[meter]]
bus = "rs485"
unit = 4
model = "eastron-sdm120"
"#;

/// Four meters read every second; a short keep-alive and reconnect wait, so an outage and a
/// restart are noticed quickly.
fn write_config(dir: &Path, port: u16) -> PathBuf {
    let mut text = format!(
        r#"
[gateway]
id = "gw1"
data_dir = "data"

[mqtt]
host = "127.0.0.1"
port = {port}
keep_alive_s = 5
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
    for unit in 1..=4 {
        text += &format!(
            "\n[[meter]]\nid = \"m{unit}\"\nbus = \"rs485\"\nunit = {unit}\nmodel = \"eastron-sdm120\"\n"
        );
    }
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Adds `n` unsent messages to the store at `db` (the gateway stopped); returns the last seq.
fn add_backlog(db: &Path, n: u64) -> u64 {
    let cfg = StoreConfig {
        history_days: 35,
        max_size_mb: 1024,
        commit_window_ms: 0,
    };
    let mut store = Store::open(db, &cfg).unwrap();
    let messages = (0..n)
        .map(|i| Message {
            topic: format!("amr/gw1/reading/old{}", i % 7),
            payload: serde_json::json!({"meter": format!("old{}", i % 7), "n": i}).into(),
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
    store.last_seq().unwrap()
}

async fn sigkill_at_random_moments(kills: usize, test: &str) {
    let mut rng = FaultRng::from_env(test);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("amr-gateway.db");
    assert_eq!(add_backlog(&db, BACKLOG), BACKLOG);
    let mut broker = Mosquitto::start_persistent();
    let since = std::time::SystemTime::now();
    let sub = Subscriber::start(broker.port, "fault-kill", "amr/gw1/#").await;
    broker.wait_saved(since);
    let sims = SimRuntime::new();
    let _sim = sims.start(SIM, "sim.toml", dir.path());
    let config = write_config(dir.path(), broker.port);

    let outage_at = kills / 2;
    let mut broker_down = false;
    let mut log = Vec::new();
    // The highest seq in the outbox when a drain began, and the kills that fell during one.
    let mut drain_until = BACKLOG;
    let mut kills_in_drain = 0;
    for k in 0..kills {
        if k == outage_at {
            // The broker goes away for a while; the gateway keeps collecting into the outbox
            // and is killed twice meanwhile.
            broker.kill();
            broker_down = true;
        }
        if k == outage_at + 2 {
            // A longer outage would have left more: the outbox gets another backlog (the
            // gateway is stopped), then the broker comes back.
            drain_until = add_backlog(&db, BACKLOG);
            broker.restart();
            broker_down = false;
        }
        let mut gateway = Gateway::start(&config, "gateway.log");
        // While the broker is down, long enough runs to build a backlog; right after it came
        // back, short runs, so the kills fall while that backlog drains.
        let wait = if broker_down {
            rng.between(2_000, 5_000)
        } else if k < 3 || (k >= outage_at + 2 && k < outage_at + 5) {
            // A drain of the backlog takes a few seconds at most: kill early in it.
            rng.between(50, 600)
        } else {
            rng.between(50, 3_000)
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if let Some(status) = gateway.exited() {
            panic!(
                "the gateway exited by itself ({status}) before kill {k}\n{}",
                support::log_tail(dir.path(), 40)
            );
        }
        let before = SeqLedger::of(&sub.received()).first.len();
        gateway.kill();
        let seen = SeqLedger::of(&sub.received());
        let draining = !broker_down && (seen.max() as u64) < drain_until && before > 0;
        kills_in_drain += usize::from(draining);
        log.push(format!(
            "kill {k} after {wait} ms{}{}: {} seqs received, highest {}",
            if broker_down { " (broker down)" } else { "" },
            if draining { " (during a drain)" } else { "" },
            seen.first.len(),
            seen.max()
        ));
    }
    for line in &log {
        eprintln!("{line}");
    }

    // A last run, undisturbed, until everything stored so far has arrived, then a stop.
    let mut gateway = Gateway::start(&config, "gateway.log");
    let target = SeqLedger::of(&sub.received()).max().max(BACKLOG) + 20;
    let complete = sub
        .wait_until(PATIENCE, |r| {
            let l = SeqLedger::of(r);
            l.max() >= target && l.missing(l.max()).is_empty()
        })
        .await;
    let status = gateway.terminate();
    let (integrity, last, pending) = support::store_after(&db);
    // What the broker acknowledged before the stop is gone from the outbox but may still be
    // on its way to the subscriber (a loaded machine): wait for it before judging a seq lost.
    let received = sub
        .wait_until(PATIENCE, |r| {
            let l = SeqLedger::of(r);
            l.missing(last)
                .into_iter()
                .flat_map(|(a, b)| a..=b)
                .all(|s| pending.contains(&s))
        })
        .await
        .unwrap_or_else(|| sub.received());
    let ledger = SeqLedger::of(&received);
    assert_eq!(integrity, "ok", "the store after {kills} SIGKILLs");
    assert!(
        ledger.reused.is_empty(),
        "seq reused with other content: {:?}",
        &ledger.reused[..ledger.reused.len().min(3)]
    );
    // Every seq the store gave out was received, or is still in the outbox (sent next time).
    let lost: Vec<(u64, u64)> = ledger
        .missing(last)
        .into_iter()
        .flat_map(|(a, b)| a..=b)
        .filter(|s| !pending.contains(s))
        .map(|s| (s, s))
        .collect();
    assert!(
        lost.is_empty(),
        "seqs neither received nor in the outbox (first 10): {:?}\n{}",
        &lost[..lost.len().min(10)],
        support::log_tail(dir.path(), 40)
    );
    assert!(
        ledger.max() <= last,
        "received seq {} above the store's counter {last}",
        ledger.max()
    );
    assert!(
        complete.is_some(),
        "the last run did not deliver up to seq {target}; highest {}, gaps {:?}\n{}",
        ledger.max(),
        &ledger.missing(ledger.max())[..ledger.missing(ledger.max()).len().min(5)],
        support::log_tail(dir.path(), 40)
    );
    assert!(
        ledger.max() > BACKLOG,
        "readings were collected between kills"
    );
    assert!(
        kills_in_drain > 0,
        "no kill fell during a backlog drain: {log:?}"
    );
    eprintln!(
        "{test}: {kills} SIGKILLs, {kills_in_drain} of them during a backlog drain; seq 1..={last}, {} received ({} again with the same content), \
         {} still in the outbox, stopped with {status}",
        ledger.first.len(),
        ledger.duplicates,
        pending.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_at_random_moments_lose_no_seq() {
    let started = Instant::now();
    sigkill_at_random_moments(10, "ten_sigkills").await;
    eprintln!("took {:?}", started.elapsed());
}

/// The long run: `cargo test --test faults_kill -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run (50 SIGKILLs, a few minutes): cargo test --test faults_kill -- --ignored"]
async fn fifty_sigkills_at_random_moments_lose_no_seq() {
    sigkill_at_random_moments(50, "fifty_sigkills").await;
}
