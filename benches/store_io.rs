//! Bytes written to disk per reading, steady state, by the store writer and the publisher's
//! acknowledgements (issue 14, "write little").
//!
//! One process drives the real pipeline [`Writer`] (every analytics engine, one area over all
//! meters) and a real SQLite [`Store`] on the disk-backed temp directory, in compressed time:
//! `METERS` three-phase meters (every contract quantity, 26 values) on 10 buses, each read once
//! a simulated minute, the readings spread evenly over the minute as the buses deliver them.
//! The commits follow the gateway's store writer loop: readings arriving within one
//! `[store] commit_window_ms` go in one transaction, with the analytics tick when the last was
//! 5 s ago or more (readings spread over the minute keep the bus busy, so the tick always goes
//! with a window's readings here; a quiet second's tick goes alone; a window of 0 is the loop
//! before the window existed: one transaction per bus event); every outbox row is acknowledged as a broker on loopback would, in the publisher's
//! delete transactions (one every `ACK_MS`), and the store is pruned every 600 s as the loop does.
//!
//! The figure is the growth of this process's `write_bytes` (/proc/self/io: every byte sent
//! to the block layer, WAL, checkpoints and the database file alike) over `MEASURE_MIN`
//! simulated minutes after `WARMUP_MIN` minutes of warm-up, divided by the readings stored in
//! that time. CPU (user + system) per reading over the same span.
//!
//! Run with `cargo bench --bench store_io` (environment: `METERS`, default 1000;
//! `COMMIT_WINDOW_MS`, default the configuration's default; `ACK_MS`, default the publisher's
//! flush cadence; `WARMUP_MIN` 10; `MEASURE_MIN` 10; `KEEP_DB`, a path to copy the store to at
//! the end). The engines save their state at each loss interval (15 min), curve block (60 min)
//! and at least hourly, so a steady-state figure needs whole hours (`WARMUP_MIN=16
//! MEASURE_MIN=60`). Results go in docs/benchmarks.md (h).

use amr_gateway::bus::BusEvent;
use amr_gateway::config::load_str;
use amr_gateway::meter::{DataType, MeterModel, ModelLibrary};
use amr_gateway::model::{QUANTITIES, Reading};
use amr_gateway::pipeline::Writer;
use amr_gateway::store::Store;
use amr_gateway::uplink::contract::Topics;
use std::collections::BTreeMap;
use std::fmt::Write;

const MIN: i64 = 60_000;
const PRUNE_EVERY_MS: i64 = 600_000;
const TICK_MS: i64 = 1_000;
/// The gateway's `TICK_DELAY_MAX` (src/gateway.rs): the longest a tick waits under events.
const TICK_DELAY_MAX_MS: i64 = 5_000;

fn env(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This process's `write_bytes` from /proc/self/io.
fn write_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("write_bytes in /proc/self/io")
}

/// User + system CPU time of this process, in microseconds.
fn cpu_us() -> i64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec * 1_000_000 + t.tv_usec;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// `v` as an SDM630-like meter delivers it: an f32 register times the model's scale (W → kW
/// 0.001), as the Modbus driver decodes it; quantities the model has no register for are
/// rounded through f32 too.
fn as_read(model: &MeterModel, quantity: &str, v: f64) -> f64 {
    let scale = model.register(quantity).map_or(1.0, |def| {
        assert_eq!(def.data_type, DataType::F32, "{quantity}");
        def.scale
    });
    ((v / scale) as f32) as f64 * scale
}

fn reading(model: &MeterModel, meter: &str, i: usize, ts: i64, t0: i64) -> Reading {
    let h = (ts - t0) as f64 / 3_600_000.0;
    let kw = if i == 0 {
        550.0
    } else {
        0.5 + (i % 10) as f64 * 0.1
    };
    let values: BTreeMap<String, f64> = QUANTITIES
        .iter()
        .map(|q| {
            let v = match *q {
                q if q.starts_with("energy_import") => 1000.0 + i as f64 + kw * h,
                q if q.ends_with("_kwh") || q.ends_with("_kvarh") => 12.5,
                q if q.starts_with("voltage") => 229.7 + (ts % 7) as f64 * 0.1,
                "frequency_hz" => 49.98,
                "power_factor" => 0.97,
                _ => kw / 3.0 + (ts % 5) as f64 * 0.01,
            };
            (q.to_string(), as_read(model, q, v))
        })
        .collect();
    Reading {
        meter: meter.into(),
        ts_ms: ts,
        values,
    }
}

fn main() {
    let meters = env("METERS", 1000) as usize;
    let window = env("COMMIT_WINDOW_MS", default_window());
    let ack_ms = env("ACK_MS", 1000).max(1);
    let (warmup, measure) = (env("WARMUP_MIN", 10), env("MEASURE_MIN", 10));
    let library = ModelLibrary::builtin();
    let model = library.get("eastron-sdm630").expect("the SDM630 model");
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let mut text = String::from(
        "[gateway]\nid = \"gw\"\ndata_dir = \"data\"\ntimezone = \"Asia/Shanghai\"\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\n",
    );
    if window != default_window() {
        writeln!(text, "\n[store]\ncommit_window_ms = {window}").unwrap();
    }
    let ids: Vec<String> = (0..meters).map(|i| format!("m{i:04}")).collect();
    for b in 0..10 {
        writeln!(
            text,
            "\n[[bus]]\nname = \"tcp-{b}\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{}\"",
            5020 + b
        )
        .unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        writeln!(
            text,
            "\n[[meter]]\nid = \"{id}\"\nbus = \"tcp-{}\"\nunit = {}\nmodel = \"eastron-sdm630\"",
            i % 10,
            i / 10 % 247 + 1
        )
        .unwrap();
    }
    let customers: Vec<String> = ids[1..].iter().map(|m| format!("\"{m}\"")).collect();
    writeln!(
        text,
        "\n[[area]]\nid = \"T1\"\nsupply = [\"{}\"]\ncustomers = [{}]",
        ids[0],
        customers.join(", ")
    )
    .unwrap();
    let config = load_str(&text, &dir.path().join("amr.toml")).expect("bench configuration");
    let mut store = Store::open(&config.db_path(), &config.store).unwrap();
    let t0 = amr_gateway::clock::parse_rfc3339("2026-11-22T16:00:00Z").unwrap();
    let (mut writer, batch) = Writer::start(
        &config.pipeline_settings(),
        Topics::new("amr", "gw"),
        &store,
        t0,
    )
    .unwrap();
    store.commit_at(&batch, t0).unwrap();

    // Every reading's arrival time: meter i at t0 + k minutes + its slot in the minute.
    let slot = MIN / meters as i64;
    let end = t0 + (warmup + measure) * MIN;
    let measure_from = t0 + warmup * MIN;
    let (mut next_tick, mut next_ack, mut next_prune) = (t0 + TICK_MS, t0 + ack_ms, t0);
    let mut window_start: Option<i64> = None;
    let mut events: Vec<BusEvent> = Vec::new();
    let mut unacked: Vec<i64> = Vec::new();
    let mut stored = 0u64;
    let mut start: Option<(u64, i64, u64)> = None;
    let mut k = 0i64;
    // Bytes of `meta` values (engine snapshots, heartbeat, rolling loss...) handed to the
    // store, per key, from the start of the measurement.
    let meta_bytes: std::cell::RefCell<BTreeMap<String, u64>> = Default::default();
    let measuring = std::cell::Cell::new(false);
    let count_meta = |batch: &amr_gateway::store::Batch| {
        if measuring.get() {
            let mut m = meta_bytes.borrow_mut();
            for (key, value) in &batch.meta {
                let key = key.to_string();
                // One meter's part of an engine's snapshot counts for its engine.
                let name = match key.split_once("/meter/") {
                    Some((engine, _)) => format!("{engine} (by meter)"),
                    None => key,
                };
                *m.entry(name).or_default() += value.len() as u64;
            }
        }
    };
    // A transaction of the events with the analytics tick (`tick`) or without, as the
    // gateway's store writer loop does (an empty `events` with `tick`: the tick alone).
    let last_tick = std::cell::Cell::new(t0);
    let commit = |store: &mut Store,
                  writer: &mut Writer,
                  events: &mut Vec<BusEvent>,
                  now: i64,
                  tick: bool| {
        let fold = if tick {
            last_tick.set(now);
            writer.fold(events.drain(..), now)
        } else {
            writer.fold_events(events.drain(..))
        };
        let n = fold.batch.readings.len() as u64;
        if fold.batch.is_empty() {
            return (0, Vec::new());
        }
        count_meta(&fold.batch);
        let report = store.commit_at(&fold.batch, now).unwrap();
        (n, report.outbox_ids)
    };
    loop {
        let t = t0 + k * slot;
        if t >= end {
            break;
        }
        let i = (k % meters as i64) as usize;
        // Whatever is due before this reading arrives: a window closing, the tick, acks, prune.
        loop {
            let window_end = window_start.map(|s| s + window.max(0));
            let due = [
                window_end.unwrap_or(i64::MAX),
                next_tick,
                next_ack,
                next_prune + PRUNE_EVERY_MS,
            ];
            let when = *due.iter().min().unwrap();
            if when > t {
                break;
            }
            if Some(when) == window_end {
                // The tick goes with the window's events when the last was
                // `TICK_DELAY_MAX_MS` ago.
                let tick = when - last_tick.get() >= TICK_DELAY_MAX_MS;
                let (n, ids) = commit(&mut store, &mut writer, &mut events, when, tick);
                stored += n;
                unacked.extend(ids);
                window_start = None;
            } else if when == next_tick {
                // The timer, a quiet second's tick: while a window is open the loop waits
                // for it.
                if window == 0 || window_start.is_none() {
                    let (n, ids) = commit(&mut store, &mut writer, &mut events, when, true);
                    stored += n;
                    unacked.extend(ids);
                }
                next_tick += TICK_MS;
            } else if when == next_ack {
                for chunk in unacked.chunks(ack_chunk()) {
                    store.ack(chunk).unwrap();
                }
                unacked.clear();
                next_ack += ack_ms;
            } else {
                store.prune(when).unwrap();
                next_prune += PRUNE_EVERY_MS;
            }
        }
        if start.is_none() && t >= measure_from {
            start = Some((write_bytes(), cpu_us(), stored));
            measuring.set(true);
        }
        events.push(BusEvent::Reading(reading(model, &ids[i], i, t, t0)));
        if window == 0 {
            let tick = t - last_tick.get() >= TICK_DELAY_MAX_MS;
            let (n, ids) = commit(&mut store, &mut writer, &mut events, t, tick);
            stored += n;
            unacked.extend(ids);
        } else if window_start.is_none() {
            window_start = Some(t);
        }
        k += 1;
    }
    let (w0, c0, s0) = start.unwrap();
    let (bytes, cpu, readings) = (write_bytes() - w0, cpu_us() - c0, stored - s0);
    let db = std::fs::metadata(config.db_path()).map_or(0, |m| m.len());
    // KEEP_DB=path: a copy of the store, to see what it holds (sqlite3).
    if let Ok(keep) = std::env::var("KEEP_DB") {
        drop(store);
        std::fs::copy(config.db_path(), &keep).expect("KEEP_DB");
    }
    println!(
        "store_io: {meters} meters, 1 reading/min each, commit_window_ms {window}, acks every \
         {ack_ms} ms; {measure} min measured after {warmup} min"
    );
    println!(
        "  {readings} readings, {:.1} MB written: {:.0} bytes per reading; CPU {:.0} us per \
         reading; database file {:.1} MB",
        bytes as f64 / 1e6,
        bytes as f64 / readings.max(1) as f64,
        cpu as f64 / readings.max(1) as f64,
        db as f64 / 1e6
    );
    let per = |b: u64| b as f64 / readings.max(1) as f64;
    let meta = meta_bytes.into_inner();
    let total: u64 = meta.values().sum();
    print!(
        "  meta values handed to the store: {:.0} bytes per reading (",
        per(total)
    );
    let parts: Vec<String> = meta
        .iter()
        .map(|(k, b)| format!("{k} {:.0}", per(*b)))
        .collect();
    println!("{})", parts.join(", "));
}

/// The configuration's default commit window.
fn default_window() -> i64 {
    amr_gateway::store::COMMIT_WINDOW_MS as i64
}

/// Acknowledged rows per delete transaction (the publisher's `ACK_BATCH`).
fn ack_chunk() -> usize {
    1024
}
