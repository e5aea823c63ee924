//! Bus benchmarks against the simulator (real ptys, real wire-time pacing):
//!
//! (a) the cycle time of a bus of ten Eastron SDM630 at 9600 baud (meter turnaround 10 ms),
//!     against its wire-time bound computed with [`RtuTiming`]: back to back through the
//!     transport, and through the bus poller when the bus is saturated;
//! (b) the bus cost of dead meters: the poll rate of six live SDM120 (a saturated bus) with
//!     0, 1, 2 and 5 dead meters under the default probe budget, and 5 without a budget.
//!
//! Run with `cargo bench --bench bus`; about three minutes. Results go in docs/benchmarks.md.

use amr_gateway::bus::{BusEvent, BusSettings, MeterSettings, OfflinePolicy, plan_meter, run_bus};
use amr_gateway::liveness::Heartbeat;
use amr_gateway::meter::{MeterModel, ModelLibrary};
use amr_gateway::protocol::modbus::{ModbusClient, RtuTiming};
use amr_gateway::sim::{self, SimConfig};
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

const TURNAROUND_MS: u64 = 10;

fn meter(bus: &str, unit: u8, model: Arc<MeterModel>) -> MeterSettings {
    MeterSettings {
        poll_interval: Some(Duration::from_secs(1)),
        ..MeterSettings::modbus(format!("{bus}-{unit}"), unit, model)
    }
}

fn sim_bus(text: &mut String, name: &str, live: u8, dead: u8, model: &str, timeout_ms: u64) {
    writeln!(
        text,
        "[[bus]]\nname = \"{name}\"\nlink = \"tty-{name}\"\nbaud = 9600\n\
         turnaround_ms = {TURNAROUND_MS}\ngateway_timeout_ms = {timeout_ms}"
    )
    .unwrap();
    for unit in 1..=live + dead {
        writeln!(
            text,
            "[[meter]]\nbus = \"{name}\"\nunit = {unit}\nmodel = \"{model}\"\n\
             fault = {{ no_reply = {} }}",
            unit > live
        )
        .unwrap();
    }
}

async fn cycle_time(library: &ModelLibrary) {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    sim_bus(&mut text, "sdm630", 10, 0, "eastron-sdm630", 1000);
    let sim = sim::start(
        SimConfig::parse(&text, "bench", dir.path()).unwrap(),
        library,
    )
    .unwrap();
    let model = library.get("eastron-sdm630").unwrap();
    let blocks = plan_meter(model, model.max_block);
    let timing = RtuTiming::new(9600, 10);
    let per_meter: Duration = blocks
        .iter()
        .map(|b| timing.read_wire_time(b.count) + Duration::from_millis(TURNAROUND_MS))
        .sum();
    let bound = per_meter * 10;

    // Back to back through the transport.
    let bus = sim.bus_settings("sdm630").unwrap();
    let link = sim.link("sdm630").unwrap();
    let mut client = ModbusClient::open(&link, bus.timeout).await.unwrap();
    let timeout = Duration::from_millis(1000);
    let cycles = 5;
    let started = Instant::now();
    for _ in 0..cycles {
        for unit in 1..=10u8 {
            for b in &blocks {
                client
                    .read_registers(unit, b.function, b.address, b.count, timeout)
                    .await
                    .unwrap();
            }
        }
    }
    let back_to_back = started.elapsed() / cycles;
    drop(client);

    // Through the poller, saturated (every meter due every second).
    let meters = (1..=10)
        .map(|u| meter("sdm630", u, Arc::new(model.clone())))
        .collect();
    let run_for = Duration::from_secs(30);
    let readings = run_for_counting(bus, meters, OfflinePolicy::default(), run_for).await;
    let poller = run_for.div_f64(readings as f64 / 10.0);

    println!("(a) cycle time, 10 x eastron-sdm630, 9600 8N1, turnaround {TURNAROUND_MS} ms");
    println!(
        "    plan: {} request(s) per meter ({:?} registers)",
        blocks.len(),
        blocks.iter().map(|b| b.count).collect::<Vec<_>>()
    );
    println!("    | | cycle of 10 meters | vs wire-time bound |");
    println!("    |---|---|---|");
    println!(
        "    | wire-time bound (RtuTiming + turnaround) | {:.0} ms | 1.00 |",
        ms(bound)
    );
    println!(
        "    | transport, back to back ({cycles} cycles) | {:.0} ms | {:.2} |",
        ms(back_to_back),
        ms(back_to_back) / ms(bound)
    );
    println!(
        "    | bus poller, saturated ({readings} polls in {} s) | {:.0} ms | {:.2} |",
        run_for.as_secs(),
        ms(poller),
        ms(poller) / ms(bound)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs one bus for `run_for`; the readings it produced.
async fn run_for_counting(
    bus: BusSettings,
    meters: Vec<MeterSettings>,
    policy: OfflinePolicy,
    run_for: Duration,
) -> u64 {
    let (tx, mut rx) = mpsc::channel(1024);
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_bus(
        bus,
        meters,
        Vec::new(),
        policy,
        tx,
        stop_rx.into(),
        Heartbeat::unwatched(),
    ));
    let counter = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(ev) = rx.recv().await {
            if let BusEvent::Reading(_) = ev {
                n += 1;
            }
        }
        n
    });
    tokio::time::sleep(run_for).await;
    stop_tx.send(true).unwrap();
    task.await.unwrap();
    counter.await.unwrap()
}

async fn dead_meter_cost(library: &ModelLibrary) {
    const LIVE: u8 = 6;
    let settle = Duration::from_secs(30);
    let measure = Duration::from_secs(120);
    let cases: [(&str, u8, f64); 5] = [
        ("dead0", 0, 0.10),
        ("dead1", 1, 0.10),
        ("dead2", 2, 0.10),
        ("dead5", 5, 0.10),
        ("dead5-nobudget", 5, 1.0),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for (name, dead, _) in cases {
        sim_bus(&mut text, name, LIVE, dead, "eastron-sdm120", 1000);
    }
    let sim = sim::start(
        SimConfig::parse(&text, "bench", dir.path()).unwrap(),
        library,
    )
    .unwrap();
    let model = Arc::new(library.get("eastron-sdm120").unwrap().clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let start = Instant::now();
    let mut runs = Vec::new();
    for (name, dead, share) in cases {
        let bus = sim.bus_settings(name).unwrap();
        let meters = (1..=LIVE + dead)
            .map(|u| meter(name, u, model.clone()))
            .collect();
        let policy = OfflinePolicy {
            max_probe_share: share,
            ..OfflinePolicy::default()
        };
        let (tx, mut rx) = mpsc::channel(1024);
        let task = tokio::spawn(run_bus(
            bus,
            meters,
            Vec::new(),
            policy,
            tx,
            stop_rx.clone().into(),
            Heartbeat::unwatched(),
        ));
        let counter = tokio::spawn(async move {
            let (mut all, mut steady) = (0u64, 0u64);
            while let Some(ev) = rx.recv().await {
                if let BusEvent::Reading(_) = ev {
                    all += 1;
                    if start.elapsed() >= settle {
                        steady += 1;
                    }
                }
            }
            (all, steady)
        });
        runs.push((name, dead, share, task, counter));
    }
    tokio::time::sleep(settle + measure).await;
    stop_tx.send(true).unwrap();
    let mut rows = Vec::new();
    for (name, dead, share, task, counter) in runs {
        task.await.unwrap();
        let (all, steady) = counter.await.unwrap();
        rows.push((name, dead, share, all, steady));
    }
    let base_all = rows[0].3 as f64;
    let base_steady = rows[0].4 as f64;
    println!();
    println!(
        "(b) bus cost of dead meters: {LIVE} live eastron-sdm120 (9600 8N1, 1 s interval, \
         saturated), dead = no reply, timeout 1000 ms, default policy (probes from 10 s doubling \
         to 600 s, max_probe_share 10 % over 60 s)"
    );
    println!(
        "    | dead meters | budget | live polls, whole {} s | % of 0 dead | live polls, last {} s | % of 0 dead |",
        (settle + measure).as_secs(),
        measure.as_secs()
    );
    println!("    |---|---|---|---|---|---|");
    for (_, dead, share, all, steady) in rows {
        println!(
            "    | {dead} | {} | {all} | {:.1} % | {steady} | {:.1} % |",
            if share >= 1.0 {
                "none".to_string()
            } else {
                format!("{:.0} %", share * 100.0)
            },
            all as f64 * 100.0 / base_all,
            steady as f64 * 100.0 / base_steady
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let library = ModelLibrary::builtin();
    rt.block_on(async {
        cycle_time(&library).await;
        dead_meter_cost(&library).await;
    });
}
