//! Random garbage on the line between valid frames, against real parts: a bus task polls two
//! simulated meters (a three-phase SDM630 read in wide blocks, a single-phase SDM120) on a real
//! pseudo-terminal while the test writes bursts of random bytes onto the line at random moments
//! (`SimHandle::inject`, a seeded generator; the seed is printed, `AMR_FAULT_SEED=N` replays).
//! A burst lands between frames or across one, as noise on RS-485 does; now and then a meter's
//! replies come for a moment with garbage glued before them or a broken CRC.
//!
//! What must hold: every poll the meter's health books as answered gave a reading (no reading
//! lost beyond the polls that truly failed), no more polls failed than bursts were written,
//! every value read is the simulator's truth (no corrupt value accepted), and no block limit
//! was learned from the noise.

mod support;

use amr_gateway::bus::{BusEvent, Learned, MeterSettings, OfflinePolicy, run_bus};
use amr_gateway::liveness::Heartbeat;
use amr_gateway::meter::ModelLibrary;
use amr_gateway::model::{Reading, is_energy};
use amr_gateway::sim::{Fault, SimHandle};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use support::{FaultRng, SimRuntime};
use tokio::sync::{mpsc, watch};

/// Upper bound for waiting on a slow machine; never an assertion about speed.
const PATIENCE: Duration = Duration::from_secs(90);
/// How long the line is noisy.
const NOISY: Duration = Duration::from_secs(20);

const SIM: &str = r#"
[[bus]]
name = "b1"
link = "ttyB1"
baud = 19200
turnaround_ms = 5
gateway_timeout_ms = 300

[[meter]]
bus = "b1"
unit = 7
model = "eastron-sdm630"
load_kw = 6.0
[[meter]]
bus = "b1"
unit = 8
model = "eastron-sdm120"
load_kw = 2.0
"#;

const METERS: [(&str, u8, &str); 2] = [("m7", 7, "eastron-sdm630"), ("m8", 8, "eastron-sdm120")];

/// Checks `reading` against what the simulator holds now: instantaneous values as they are
/// (a flat load), energy registers not above now and at most a few seconds behind.
fn check_truth(sim: &SimHandle, unit: u8, reading: &Reading) -> Result<(), String> {
    for (quantity, &value) in &reading.values {
        let truth = sim
            .value_now("b1", unit, quantity)
            .ok_or_else(|| format!("the simulator has no {quantity}"))?;
        let ok = if is_energy(quantity) {
            // 6 kW for 10 s is under 0.02 kWh; registers hold 0.01 kWh or better.
            value <= truth + 0.011 && value >= truth - 0.05
        } else {
            (value - truth).abs() <= 0.01 * truth.abs().max(1.0)
        };
        if !ok {
            return Err(format!(
                "meter {} {quantity} = {value}, the simulator holds {truth}",
                reading.meter
            ));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_between_frames_loses_only_failed_polls_and_no_value_is_corrupt() {
    let mut rng = FaultRng::from_env("line_noise");
    // (`rng` only seeds the noise task.)
    let dir = tempfile::tempdir().unwrap();
    let sims = SimRuntime::new();
    let sim = sims.start(SIM, "sim.toml", dir.path());
    let library = ModelLibrary::builtin();
    let mut bus = sim.bus_settings("b1").unwrap();
    bus.poll_interval = Duration::from_secs(1);
    bus.timeout = Duration::from_millis(300);
    let meters: Vec<MeterSettings> = METERS
        .iter()
        .map(|(id, unit, model)| {
            MeterSettings::modbus(*id, *unit, Arc::new(library.get(model).unwrap().clone()))
        })
        .collect();
    let max_block: BTreeMap<&str, u16> = METERS
        .iter()
        .map(|(id, _, model)| (*id, library.get(model).unwrap().max_block))
        .collect();
    let policy = OfflinePolicy {
        first_probe: Duration::from_secs(1),
        max_probe: Duration::from_secs(2),
        max_probe_share: 1.0,
        ..OfflinePolicy::default()
    };
    let (tx, mut events) = mpsc::channel(1024);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_bus(
        bus,
        meters,
        Vec::new(),
        policy,
        tx,
        stop_rx.into(),
        Heartbeat::unwatched(),
    ));

    // The noise: bursts of 1..64 random bytes, 20 .. 600 ms apart; and now and then, for up to
    // 300 ms, one meter's replies come with garbage glued before them or with a broken CRC.
    let bursts = Arc::new(AtomicU64::new(0));
    let windows = Arc::new(AtomicU64::new(0));
    let noise = {
        let sim = sim.clone();
        let bursts = Arc::clone(&bursts);
        let windows = Arc::clone(&windows);
        let mut rng = rng.fork();
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + NOISY;
            while tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(rng.between(20, 600))).await;
                let n = rng.between(1, 64) as usize;
                sim.inject("b1", &rng.bytes(n));
                bursts.fetch_add(1, Ordering::Relaxed);
                if rng.between(0, 4) == 0 {
                    let unit = METERS[rng.between(0, 2) as usize].1;
                    let fault = if rng.between(0, 2) == 0 {
                        Fault {
                            garbage_before: rng.between(1, 100) as usize,
                            ..Fault::default()
                        }
                    } else {
                        Fault {
                            bad_crc: true,
                            ..Fault::default()
                        }
                    };
                    sim.set_fault("b1", unit, fault).unwrap();
                    tokio::time::sleep(Duration::from_millis(rng.between(20, 300))).await;
                    sim.set_fault("b1", unit, Fault::default()).unwrap();
                    windows.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let mut readings: BTreeMap<String, u64> = BTreeMap::new();
    let mut corrupt = Vec::new();
    let mut lost = Vec::new();
    let mut narrowed = Vec::new();
    // After the noise, until each meter has reported its health once more.
    let mut reported_after: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + NOISY + PATIENCE;
    while reported_after.len() < METERS.len() {
        let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.recv()).await else {
            panic!("events stopped; reported after the noise: {reported_after:?}");
        };
        match ev {
            BusEvent::Reading(r) => {
                let unit = METERS.iter().find(|m| m.0 == r.meter).unwrap().1;
                if let Err(e) = check_truth(&sim, unit, &r) {
                    corrupt.push(e);
                }
                *readings.entry(r.meter.clone()).or_default() += 1;
            }
            BusEvent::MeterState(s) => {
                let got = readings.get(&s.meter).copied().unwrap_or(0);
                if got != s.health.successes {
                    lost.push(format!(
                        "{}: {} answered polls, {got} readings",
                        s.meter, s.health.successes
                    ));
                }
                if noise.is_finished() {
                    reported_after.insert(s.meter.clone(), (s.health.polls, s.health.successes));
                }
            }
            BusEvent::Learned {
                meter,
                learned: Learned::BlockLimit(n),
            } if n < max_block[meter.as_str()] => narrowed.push((meter, n)),
            BusEvent::Learned { .. } | BusEvent::MeterFreeze { .. } => {}
        }
    }
    stop.send(true).unwrap();
    drop(events);
    let _ = task.await;
    let bursts = bursts.load(Ordering::Relaxed);
    let windows = windows.load(Ordering::Relaxed);
    let failed: u64 = reported_after.values().map(|(p, s)| p - s).sum();
    let polls: u64 = reported_after.values().map(|(p, _)| p).sum();
    eprintln!(
        "{bursts} bursts of noise, {windows} windows of bad replies; {polls} polls, {failed} failed; readings {readings:?}; \
         requests seen by the simulator: {}",
        sim.requests("b1")
    );
    assert!(corrupt.is_empty(), "corrupt values accepted: {corrupt:?}");
    assert!(lost.is_empty(), "readings lost: {lost:?}");
    assert!(
        narrowed.is_empty(),
        "noise taught block limits: {narrowed:?}"
    );
    // A burst can spoil the poll it lands in; a window of bad replies, the meter's poll
    // (and a retry) in it.
    assert!(
        failed <= bursts + 2 * windows,
        "{failed} polls failed but only {bursts} bursts and {windows} windows were written"
    );
    assert!(bursts >= 5, "the noise ran");
    for (id, (polls, successes)) in &reported_after {
        assert!(
            *successes * 2 > *polls,
            "{id}: {successes} of {polls} polls"
        );
    }
}
