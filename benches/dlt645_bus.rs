//! DL/T 645 bus benchmark against the simulator (a real pty, real wire-time pacing): the cycle
//! time of a bus of 30 DL/T 645-2007 meters at 2400 baud 8E1 against its wire-time lower
//! bound — every request with its `FE` preamble, every reply with the `FE` × 4 the meters
//! send, 11 bits a character, and the meters' response delay — read through the daemon's
//! read path: the DL/T 645 driver back to back, and the bus poller when the bus is saturated.
//!
//! The simulator paces 8E1 (11 bits a character); the gateway's end of the pty runs 8N1 (ptys
//! refuse parity), which changes nothing on a pty but the label.
//!
//! Run with `cargo bench --bench dlt645_bus`; about three minutes. Results go in
//! docs/benchmarks.md.

use amr_gateway::bus::dlt645::plan_reads;
use amr_gateway::bus::{
    BusEvent, BusSettings, Dlt645Driver, MeterSettings, OfflinePolicy, PollOutcome, run_bus,
};
use amr_gateway::liveness::Heartbeat;
use amr_gateway::meter::{DiRead, Dlt645Model, ModelLibrary};
use amr_gateway::protocol::dlt645::Line;
use amr_gateway::protocol::dlt645::codec::{DEFAULT_PREAMBLE_LEN, FRAME_OVERHEAD};
use amr_gateway::protocol::dlt645::transport::MAX_RESPONSE_DELAY;
use amr_gateway::sim::{self, SimConfig};
use std::collections::BTreeSet;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

const METERS: usize = 30;
const BAUD: u32 = 2400;
/// The meters' response delay: from the end of the request to the start of the reply.
const RESPONSE_DELAY_MS: u64 = 20;
const MODEL: &str = "dlt645-2007";

fn address(i: usize) -> String {
    format!("{:012}", 100 + i)
}

fn sim_text() -> String {
    let mut text = format!(
        "[[bus]]\nname = \"d\"\nlink = \"ttyD\"\nprotocol = \"dlt645\"\nbaud = {BAUD}\n\
         parity = \"even\"\nturnaround_ms = {RESPONSE_DELAY_MS}\ngateway_timeout_ms = 1200\n"
    );
    for i in 0..METERS {
        writeln!(
            text,
            "[[meter]]\nbus = \"d\"\nunit = {}\naddress = \"{}\"\nmodel = \"{MODEL}\"\n\
             load_kw = 2.0\nenergy_start_kwh = 1000.0",
            i + 1,
            address(i)
        )
        .unwrap();
    }
    text
}

/// Bytes of the value of `read`.
fn value_len(model: &Dlt645Model, read: &DiRead) -> usize {
    read.items
        .iter()
        .filter_map(|di| model.entry(*di))
        .map(|e| e.format.len())
        .sum()
}

/// The wire-time lower bound of one poll of `reads`: Σ request (FE × preamble + frame with the
/// identifier) + response delay + reply (FE × 4 + frame with the identifier and the value), at
/// 8E1 (11 bits a character).
fn poll_bound(model: &Dlt645Model, reads: &[DiRead], line: &Line) -> (Duration, usize) {
    let mut bytes = 0;
    let mut time = Duration::ZERO;
    for r in reads {
        let request = DEFAULT_PREAMBLE_LEN + FRAME_OVERHEAD + r.di.len();
        let reply = DEFAULT_PREAMBLE_LEN + FRAME_OVERHEAD + r.di.len() + value_len(model, r);
        bytes += request + reply;
        time += line.frame_time(request + reply) + Duration::from_millis(RESPONSE_DELAY_MS);
    }
    (time, bytes)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn meters(model: &Arc<Dlt645Model>) -> Vec<MeterSettings> {
    (0..METERS)
        .map(|i| MeterSettings {
            poll_interval: Some(Duration::from_secs(1)),
            ..MeterSettings::dlt645(format!("m{i}"), address(i), model.clone())
        })
        .collect()
}

/// One cycle of the bus through the driver, meter after meter, as fast as the wire allows.
async fn back_to_back(bus: &BusSettings, meters: &[MeterSettings]) -> Duration {
    let mut driver = Dlt645Driver::new(bus, meters, &[], &OfflinePolicy::default()).unwrap();
    driver.open_link().await.unwrap();
    // A warm-up poll of the first meter (the simulator's first reply, the runtime).
    driver.poll_meter(0, true).await;
    let started = Instant::now();
    for i in 0..meters.len() {
        let poll = driver.poll_meter(i, true).await;
        assert_eq!(poll.outcome, PollOutcome::Ok, "{:?}", poll.failures);
    }
    started.elapsed()
}

/// The bus poller, every meter due every second: the time between the first reading and the
/// reading `METERS` polls later (one whole cycle of the bus).
async fn saturated(bus: BusSettings, meters: Vec<MeterSettings>) -> Duration {
    let (tx, mut rx) = mpsc::channel(1024);
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_bus(
        bus,
        meters,
        Vec::new(),
        OfflinePolicy::default(),
        tx,
        stop_rx.into(),
        Heartbeat::unwatched(),
    ));
    let mut first = None;
    let mut n = 0;
    let cycle = loop {
        let Some(ev) = rx.recv().await else {
            panic!("the bus stopped")
        };
        if let BusEvent::Reading(_) = ev {
            let now = Instant::now();
            let first = *first.get_or_insert(now);
            if n == METERS {
                break now - first;
            }
            n += 1;
        }
    };
    stop_tx.send(true).unwrap();
    task.await.unwrap();
    cycle
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let library = ModelLibrary::builtin();
    let model = Arc::new(library.get_dlt645(MODEL).unwrap().clone());
    let line = Line::even(BAUD);
    let blocks = plan_reads(&model, &BTreeSet::new(), &BTreeSet::new());
    let refused: BTreeSet<_> = model.blocks.iter().map(|b| b.di).collect();
    let singles = plan_reads(&model, &refused, &BTreeSet::new());
    let (per_meter, bytes) = poll_bound(&model, &blocks, &line);
    let (per_meter_singles, bytes_singles) = poll_bound(&model, &singles, &line);
    let bound = per_meter * METERS as u32;
    let bound_singles = per_meter_singles * METERS as u32;

    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let sim = sim::start(
            SimConfig::parse(&sim_text(), "bench", dir.path()).unwrap(),
            &library,
        )
        .unwrap();
        let bus = BusSettings {
            timeout: line.default_timeout(),
            ..sim.bus_settings("d").unwrap()
        };
        let meters = meters(&model);
        let driver = back_to_back(&bus, &meters).await;
        let poller = saturated(bus, meters).await;

        println!(
            "DL/T 645 cycle time, {METERS} x {MODEL}, {BAUD} baud 8E1 (11 bits a character), \
             response delay {RESPONSE_DELAY_MS} ms, FE x {DEFAULT_PREAMBLE_LEN} before every \
             request and reply"
        );
        println!(
            "    plan: {} reads per meter ({} of them block identifiers), {bytes} bytes on the \
             wire per poll; item by item it would be {} reads, {bytes_singles} bytes",
            blocks.len(),
            blocks.iter().filter(|r| r.is_block()).count(),
            singles.len()
        );
        println!(
            "    bound per meter: {bytes} bytes x 11 bits / {BAUD} baud + {} x {RESPONSE_DELAY_MS} \
             ms = {:.0} ms",
            blocks.len(),
            ms(per_meter)
        );
        println!("    | | cycle of {METERS} meters | vs wire-time bound |");
        println!("    |---|---|---|");
        println!(
            "    | wire-time bound (block identifiers) | {:.0} ms | 1.00 |",
            ms(bound)
        );
        println!(
            "    | DL/T 645 driver, back to back | {:.0} ms | {:.3} |",
            ms(driver),
            ms(driver) / ms(bound)
        );
        println!(
            "    | bus poller, saturated (one cycle) | {:.0} ms | {:.3} |",
            ms(poller),
            ms(poller) / ms(bound)
        );
        println!(
            "    | for comparison: bound item by item | {:.0} ms | {:.2} |",
            ms(bound_singles),
            ms(bound_singles) / ms(bound)
        );
        println!(
            "    (the standard lets a meter wait up to {} ms before replying: with that \
             response delay the bound is {:.0} ms)",
            MAX_RESPONSE_DELAY.as_millis(),
            ms(bound
                + (MAX_RESPONSE_DELAY - Duration::from_millis(RESPONSE_DELAY_MS))
                    * (blocks.len() * METERS) as u32)
        );
        drop(sim);
    });
}
