//! Learning that noise cannot fool, against real parts: a bus task on a real pseudo-terminal
//! polls a simulated meter whose line turns noisy (garbage before the replies, bad CRCs) for a
//! while. Noise is line trouble, not the meter's block limit: nothing is narrowed. A limit
//! learned wrongly (passed in as learned earlier) is re-tried after the re-learn period and
//! heals; a real limit is learned again after the re-try.

use amr_gateway::bus::{BusEvent, Learned, MeterSettings, OfflinePolicy, run_bus};
use amr_gateway::liveness::Heartbeat;
use amr_gateway::meter::{ModelLibrary, plan_blocks};
use amr_gateway::sim::{self, Fault, SimConfig, SimHandle};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Upper bound for waiting on a slow machine; never an assertion about speed.
const PATIENCE: Duration = Duration::from_secs(90);
const MODEL: &str = "eastron-sdm630";

fn start_sim(dir: &std::path::Path, max_block: u16) -> SimHandle {
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
        [meter.fault]
        max_block = {max_block}
    "#
    );
    let config = SimConfig::parse(&text, "sim.toml", dir).unwrap();
    sim::start(config, &ModelLibrary::builtin()).unwrap()
}

struct Running {
    events: mpsc::Receiver<BusEvent>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn run(sim: &SimHandle, learned: Vec<Learned>, relearn_after: Duration) -> Running {
    let mut bus = sim.bus_settings("b1").unwrap();
    bus.poll_interval = Duration::from_secs(1);
    bus.timeout = Duration::from_millis(300);
    let model = Arc::new(ModelLibrary::builtin().get(MODEL).unwrap().clone());
    let meters = vec![MeterSettings::modbus("m7", 7, model)];
    let policy = OfflinePolicy {
        relearn_after,
        first_probe: Duration::from_secs(1),
        max_probe: Duration::from_secs(2),
        max_probe_share: 1.0,
        ..OfflinePolicy::default()
    };
    let (tx, events) = mpsc::channel(1024);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_bus(
        bus,
        meters,
        learned.into_iter().map(|l| ("m7".to_string(), l)).collect(),
        policy,
        tx,
        stop_rx.into(),
        Heartbeat::unwatched(),
    ));
    Running { events, stop, task }
}

impl Running {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        drop(self.events);
        let _ = self.task.await;
    }
}

fn model_max_block() -> u16 {
    ModelLibrary::builtin().get(MODEL).unwrap().max_block
}

fn complete(ev: &BusEvent) -> bool {
    let model = ModelLibrary::builtin().get(MODEL).unwrap().clone();
    matches!(ev, BusEvent::Reading(r) if r.values.len() == model.registers.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_line_teaches_no_block_limit() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), 0);
    let model = ModelLibrary::builtin().get(MODEL).unwrap().clone();
    assert!(
        plan_blocks(&model, model.max_block)
            .iter()
            .any(|b| b.count > 20)
    );
    let mut running = run(&sim, Vec::new(), Duration::from_secs(86_400));
    let mut narrowed = Vec::new();
    // A clean start: complete readings.
    let mut clean = 0;
    while clean < 2 {
        let ev = tokio::time::timeout(PATIENCE, running.events.recv())
            .await
            .unwrap()
            .unwrap();
        clean += usize::from(complete(&ev));
    }
    // A noisy afternoon: garbage before replies, bad CRCs, replies lost in bursts of noise
    // (the meter's reply drowned: silence on whatever was read then), in turns.
    let burst = Fault {
        no_reply: true,
        ..Fault::default()
    };
    let noises = [
        Fault {
            garbage_before: 40,
            ..Fault::default()
        },
        Fault {
            bad_crc: true,
            ..Fault::default()
        },
        Fault {
            garbage_before: 200,
            ..Fault::default()
        },
    ];
    for round in 0..10 {
        let fault = if round % 2 == 0 {
            noises[(round / 2) % noises.len()].clone()
        } else {
            Fault::default()
        };
        // Bursts: short drops of every reply, at times that do not follow the polls.
        let until = tokio::time::Instant::now() + Duration::from_millis(3000);
        let flipper = {
            let sim = sim.clone();
            let fault = fault.clone();
            let burst = burst.clone();
            tokio::spawn(async move {
                let mut k = round as u64;
                while tokio::time::Instant::now() < until {
                    k = k.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let dark = 50 + (k >> 33) % 250;
                    sim.set_fault("b1", 7, burst.clone()).unwrap();
                    tokio::time::sleep(Duration::from_millis(dark)).await;
                    sim.set_fault("b1", 7, fault.clone()).unwrap();
                    tokio::time::sleep(Duration::from_millis(300 + (k >> 40) % 700)).await;
                }
            })
        };
        while let Ok(Some(ev)) = tokio::time::timeout_at(until, running.events.recv()).await {
            if let BusEvent::Learned {
                learned: Learned::BlockLimit(n),
                ..
            } = ev
                && n < model.max_block
            {
                narrowed.push(n);
            }
        }
        flipper.await.unwrap();
    }
    sim.set_fault("b1", 7, Fault::default()).unwrap();
    // The line is clean again: complete readings with the model's own blocks.
    let mut clean = 0;
    while clean < 2 {
        let ev = tokio::time::timeout(PATIENCE, running.events.recv())
            .await
            .unwrap()
            .unwrap();
        if let BusEvent::Learned {
            learned: Learned::BlockLimit(n),
            ..
        } = &ev
            && *n < model.max_block
        {
            narrowed.push(*n);
        }
        clean += usize::from(complete(&ev));
    }
    running.stop().await;
    assert!(
        narrowed.is_empty(),
        "noise taught block limits: {narrowed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_lesson_heals_after_the_relearn_period_and_a_true_one_is_learned_again() {
    let dir = tempfile::tempdir().unwrap();
    // A meter with no limit, taught 10 earlier: after the period the model's blocks are used.
    let sim = start_sim(dir.path(), 0);
    let mut running = run(&sim, vec![Learned::BlockLimit(10)], Duration::from_secs(3));
    let healed = tokio::time::timeout(PATIENCE, async {
        while let Some(ev) = running.events.recv().await {
            if let BusEvent::Learned {
                learned: Learned::BlockLimit(n),
                ..
            } = ev
                && n == model_max_block()
            {
                return;
            }
        }
    })
    .await;
    assert!(healed.is_ok(), "the wrong limit was not re-tried");
    // Then complete readings with the model's own plan, and no new narrowing.
    let mut clean = 0;
    while clean < 3 {
        let ev = tokio::time::timeout(PATIENCE, running.events.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            !matches!(ev, BusEvent::Learned { learned: Learned::BlockLimit(n), .. } if n < model_max_block()),
            "narrowed again without cause"
        );
        clean += usize::from(complete(&ev));
    }
    running.stop().await;
    drop(sim);

    // A meter that really stops at 20: re-tried after the period, learned again.
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), 20);
    let mut running = run(&sim, vec![Learned::BlockLimit(20)], Duration::from_secs(3));
    let mut limits = Vec::new();
    let relearned = tokio::time::timeout(PATIENCE, async {
        while let Some(ev) = running.events.recv().await {
            if let BusEvent::Learned {
                learned: Learned::BlockLimit(n),
                ..
            } = ev
            {
                limits.push(n);
                if limits.len() >= 2 && n <= 20 {
                    return;
                }
            }
        }
    })
    .await;
    running.stop().await;
    assert!(relearned.is_ok(), "limits seen: {limits:?}");
    assert_eq!(limits[0], model_max_block(), "the re-try: {limits:?}");
    assert!(*limits.last().unwrap() <= 20, "{limits:?}");
}
