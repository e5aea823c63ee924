//! Dead meters cost a bus at most a bounded share of its time.
//!
//! Three simulated buses run side by side (so machine load hits them alike): six live meters
//! alone; the same six plus two dead ones (no reply) under the probe budget; and the same again
//! with the budget switched off. Six meters of 80 registers at 9600 baud take longer than their
//! 1 s poll interval, so each bus is saturated and every probe costs the live meters polls.
//! Counted once the dead meters are offline, the live meters of the budgeted bus must get at
//! least (1 − share) of the polls of the bus without dead meters, minus slack; the bus without
//! a budget does worse.

use amr_gateway::bus::{BusEvent, MeterSettings, OfflinePolicy, run_bus};
use amr_gateway::liveness::Heartbeat;
use amr_gateway::meter::{MeterModel, ModelLibrary};
use amr_gateway::sim::{self, SimConfig};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

const LIVE: u8 = 6;
const DEAD: u8 = 2;
const SHARE: f64 = 0.10;
/// Dead meters are offline well before this (three failed polls at 1 s intervals).
const SETTLE: Duration = Duration::from_secs(7);
const MEASURE: Duration = Duration::from_secs(14);

fn meter(bus: &str, unit: u8, model: Arc<MeterModel>) -> MeterSettings {
    MeterSettings {
        poll_interval: Some(Duration::from_secs(1)),
        ..MeterSettings::modbus(format!("{bus}-{unit}"), unit, model)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_meters_cost_live_meters_no_more_than_the_probe_share() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    let buses = ["alone", "budget", "unbounded"];
    for b in buses {
        writeln!(
            text,
            "[[bus]]\nname = \"{b}\"\nlink = \"tty-{b}\"\nbaud = 9600\nturnaround_ms = 10\n\
             gateway_timeout_ms = 300"
        )
        .unwrap();
        let dead = if b == "alone" { 0 } else { DEAD };
        for unit in 1..=LIVE + dead {
            writeln!(
                text,
                "[[meter]]\nbus = \"{b}\"\nunit = {unit}\nmodel = \"eastron-sdm120\"\n\
                 fault = {{ no_reply = {} }}",
                unit > LIVE
            )
            .unwrap();
        }
    }
    let library = ModelLibrary::builtin();
    let sim = sim::start(
        SimConfig::parse(&text, "sim.toml", dir.path()).unwrap(),
        &library,
    )
    .unwrap();
    let model = Arc::new(library.get("eastron-sdm120").unwrap().clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut counters = Vec::new();
    let start = Instant::now();
    for b in buses {
        let mut bus = sim.bus_settings(b).unwrap();
        bus.poll_interval = Duration::from_secs(1);
        let dead = if b == "alone" { 0 } else { DEAD };
        let meters = (1..=LIVE + dead)
            .map(|u| meter(b, u, model.clone()))
            .collect();
        let policy = OfflinePolicy {
            first_probe: Duration::from_millis(500),
            max_probe: Duration::from_secs(1),
            max_probe_share: if b == "unbounded" { 1.0 } else { SHARE },
            probe_window: Duration::from_secs(5),
            ..OfflinePolicy::default()
        };
        let (tx, mut rx) = mpsc::channel(1024);
        tasks.push(tokio::spawn(run_bus(
            bus,
            meters,
            Vec::new(),
            policy,
            tx,
            stop_rx.clone().into(),
            Heartbeat::unwatched(),
        )));
        // (live readings in the measured period, all readings)
        counters.push(tokio::spawn(async move {
            let (mut measured, mut all) = (0u64, 0u64);
            while let Some(ev) = rx.recv().await {
                if let BusEvent::Reading(_) = ev {
                    all += 1;
                    let t = start.elapsed();
                    if t >= SETTLE && t < SETTLE + MEASURE {
                        measured += 1;
                    }
                }
            }
            (measured, all)
        }));
    }
    tokio::time::sleep(SETTLE + MEASURE).await;
    stop_tx.send(true).unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let mut counts = BTreeMap::new();
    for (b, c) in buses.iter().zip(counters) {
        counts.insert(*b, c.await.unwrap());
    }
    let alone = counts["alone"].0 as f64;
    let ratio = |b: &str| counts[b].0 as f64 / alone;
    let report = format!(
        "live polls in {MEASURE:?}: alone {}, with {DEAD} dead under the budget {} ({:.0} %), \
         without a budget {} ({:.0} %)",
        counts["alone"].0,
        counts["budget"].0,
        ratio("budget") * 100.0,
        counts["unbounded"].0,
        ratio("unbounded") * 100.0
    );
    eprintln!("{report}");
    assert!(alone >= 20.0, "the bus did not run: {report}");
    // Bound: (1 − share); slack for the probe that may straddle the window's edge and for noise.
    assert!(
        ratio("budget") >= 1.0 - SHARE - 0.15,
        "dead meters took more than their share: {report}"
    );
    assert!(
        ratio("unbounded") < ratio("budget"),
        "without a budget dead meters should cost more: {report}"
    );
    // The dead meters are still probed under the budget: requests beyond the live polls and the
    // failed polls that took them offline.
    let dead_requests = sim.requests("budget") - counts["budget"].1;
    let offline_cost = u64::from(DEAD) * 4; // 3 failed polls, the first with a liveness check
    assert!(
        dead_requests > offline_cost,
        "dead meters never probed: {dead_requests} requests; {report}"
    );
}
