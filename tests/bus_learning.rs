//! Request planning that learns, end to end through the real gateway: a simulated meter that
//! rejects large blocks (exception 03, or silence) is narrowed, its readings are complete, the
//! limit is stored, and after a restart the gateway polls with the learned limit from the first
//! request on — not one failing request.
//!
//! The broker is unreachable on purpose: the gateway polls and stores regardless.

mod support;

use amr_gateway::config::{self, Config};
use amr_gateway::gateway::{self, GatewayState};
use amr_gateway::meter::{ModelLibrary, plan_blocks};
use amr_gateway::sim::{self, SimConfig, SimHandle};
use amr_gateway::store::Store;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use tokio::sync::watch;

/// Upper bound for waiting on a slow machine; never an assertion about speed.
const PATIENCE: Duration = Duration::from_secs(60);
const MODEL: &str = "eastron-sdm630";
const METER_LIMIT: u16 = 20;

fn start_sim(dir: &Path, silent: bool) -> SimHandle {
    let text = format!(
        r#"
        [[bus]]
        name = "b1"
        link = "ttyB1"
        baud = 19200
        turnaround_ms = 5
        gateway_timeout_ms = 300
        [[meter]]
        bus = "b1"
        unit = 7
        model = "{MODEL}"
        load_kw = 4.0
        energy_start_kwh = 1234.0
        [meter.fault]
        max_block = {METER_LIMIT}
        block_limit_silent = {silent}
    "#
    );
    let config = SimConfig::parse(&text, "sim.toml", dir).unwrap();
    sim::start(config, &ModelLibrary::builtin()).unwrap()
}

fn gateway_config(dir: &Path) -> Config {
    let text = format!(
        r#"
        [gateway]
        id = "gw-learn"
        data_dir = "{data}"
        [mqtt]
        host = "127.0.0.1"
        port = {port}
        [[bus]]
        name = "b1"
        protocol = "modbus-rtu"
        device = "{link}"
        baud = 19200
        timeout_ms = 300
        poll_interval_s = 1
        [[meter]]
        id = "m7"
        bus = "b1"
        unit = 7
        model = "{MODEL}"
    "#,
        data = dir.join("data").display(),
        link = dir.join("ttyB1").display(),
        // Nothing listens there: the uplink retries in the background.
        port = support::free_port(),
    );
    config::load_str(&text, &dir.join("gateway.toml")).unwrap()
}

/// Runs the gateway until it has stored `readings` readings, then stops it; the last figures.
async fn run_until(config: Config, readings: u64) -> GatewayState {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (live_tx, mut live_rx) = watch::channel(GatewayState::default());
    let task = tokio::spawn(gateway::run(config, stop_rx.into(), Some(live_tx)));
    let waited = tokio::time::timeout(
        PATIENCE,
        live_rx.wait_for(|s| s.readings_stored >= readings),
    )
    .await
    .map(|r| r.map(|_| ()));
    assert!(
        waited.is_ok(),
        "no {readings} readings within {PATIENCE:?}: {:?}",
        live_rx.borrow().clone()
    );
    stop_tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    live_rx.borrow().clone()
}

async fn narrows_remembers_and_reuses(silent: bool) {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), silent);
    let config = gateway_config(dir.path());
    let model = config.models.get(MODEL).unwrap().clone();
    let want: BTreeSet<String> = model.registers.iter().map(|r| r.quantity.clone()).collect();
    assert!(
        plan_blocks(&model, model.max_block)
            .iter()
            .any(|b| b.count > METER_LIMIT),
        "test bug: the model's plan must exceed the meter's limit"
    );

    // First run: the gateway learns.
    run_until(config.clone(), 3).await;
    let limit = {
        let store = Store::open(&config.db_path(), &config.store).unwrap();
        let limits = store.block_limits().unwrap();
        let limit = *limits.get("m7").expect("no block limit stored for m7");
        assert!(
            (1..=METER_LIMIT).contains(&limit),
            "stored limit {limit} > the meter's {METER_LIMIT}"
        );
        let history = store.history("m7", 0, i64::MAX).unwrap();
        assert!(history.len() >= 3, "{} readings", history.len());
        for r in &history {
            let got: BTreeSet<String> = r.values.keys().cloned().collect();
            assert_eq!(got, want, "incomplete reading while narrowing");
        }
        let last = history.last().unwrap();
        let v = last.values["voltage_l1_v"];
        let sim_v = sim.value_now("b1", 7, "voltage_l1_v").unwrap();
        assert!((v - sim_v).abs() < 1e-3, "voltage {v} vs {sim_v}");
        let e = last.values["energy_import_kwh"];
        assert!((1234.0..1235.0).contains(&e), "energy {e}");
        limit
    };

    // Second run: the learned limit is used from the first poll on.
    let before = sim.requests("b1");
    let state = run_until(config.clone(), 3).await;
    let requests = sim.requests("b1") - before;
    let per_poll = plan_blocks(&model, limit).len() as u64;
    assert_eq!(
        requests,
        state.readings_stored * per_poll,
        "after the restart every poll should be {per_poll} working requests \
         ({} readings, {requests} requests)",
        state.readings_stored
    );
    let store = Store::open(&config.db_path(), &config.store).unwrap();
    assert_eq!(store.block_limits().unwrap().get("m7"), Some(&limit));
    let last = store.latest_reading("m7").unwrap().unwrap();
    let got: BTreeSet<String> = last.values.keys().cloned().collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exception_03_narrows_and_the_limit_survives_a_restart() {
    narrows_remembers_and_reuses(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_on_large_blocks_narrows_and_the_limit_survives_a_restart() {
    narrows_remembers_and_reuses(true).await;
}
