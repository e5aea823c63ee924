//! Draining a long outage (issue 14, "hold a long outage"): how fast a week of backlog
//! reaches a local mosquitto once the broker is back, how much memory the gateway takes
//! meanwhile, and how many bytes each waiting message takes in the store.
//!
//! 1. A store is filled through the real API as a 200-meter area's store is at the end of
//!    a week without the broker: first, delivered (committed, then acknowledged), the
//!    billing data the store keeps for its retention — the load curve (one block of 4
//!    points an hour per meter, `curve_message`) and the loss intervals and voltage days of
//!    the `history_days` (35) before the outage, the daily freezes, collection reports and
//!    daily losses of 62 days, the monthly freezes and voltage months of 24 months
//!    (`RETENTION=0` leaves them out); then the outage: `BACKLOG` reading messages (made by
//!    `Topics::reading_message`, committed with `Store::commit_at` as the writer does, with
//!    their history rows), `METERS` meters read once a minute, oldest first, with the kept
//!    messages the engines make meanwhile (curve blocks hourly, loss every 15 minutes, the
//!    daily ones), all unsent. The small kinds' payloads are padded to the sizes
//!    docs/benchmarks.md (g) measured before schema 7 (a little above today's: the store
//!    built errs on the full side); the raw history of delivered readings is not built (over the
//!    bound it is the first to go, so it does not change what the backlog keeps).
//! 2. A real mosquitto (the tests' configuration, tests/support) and a QoS 1 subscriber on
//!    `amr/gw/#`, on its own thread, that counts the backlog's arrivals by `seq` (each must
//!    arrive once).
//! 3. The real `amr-gateway run` against that store, its `LIVE` simulated SDM120 meters on a
//!    pseudo-terminal read every second, so live readings keep being stored during the drain.
//!
//! It reports the drain rate (backlog messages over the time from the first to the last
//! arrival), the gateway's resident memory during the drain (/proc/PID/status VmRSS sampled
//! every 100 ms, and VmHWM), the store's bytes per message (live pages, and per table from
//! SQLite's `dbstat`), and the live readings: stored during the drain, published after the
//! backlog in `seq` order.
//!
//! Run with `CARGO_PROFILE_RELEASE_LTO=off cargo bench --bench drain` (environment:
//! `BACKLOG`, default 2,016,000 = 200 meters x 7 days x 1440; `METERS`, default 200; `QUANTITIES`, values per reading,
//! default 26 = every contract quantity; `LIVE`, default 5; `MAX_SIZE_MB`, the store bound,
//! default 1024 as in the configuration: a store over it is pruned by the gateway in steps
//! while the backlog drains, and then its oldest unsent messages never arrive — the gateway's
//! log lines about it are printed; `MAX_INFLIGHT`, the gateway's
//! `[mqtt] max_inflight`, default 64 as in the configuration). Results: docs/benchmarks.md (i).

#[path = "../tests/support/mod.rs"]
mod support;

use amr_gateway::analytics::curve::{CurveBlock, CurvePoint};
use amr_gateway::clock::rfc3339_ms;
use amr_gateway::model::{QUANTITIES, Reading};
use amr_gateway::store::{Batch, Message, Record, RecordKind, Store, StoreSettings};
use amr_gateway::uplink::contract::{Topics, curve_message};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
/// Readings per store transaction while the backlog is built (the writer groups a commit
/// window's readings the same way).
const BUILD_BATCH: usize = 2_000;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn reading(meter: &str, i: usize, ts: i64, names: &[&str]) -> Reading {
    let minute = (ts / MIN) as f64;
    let values: BTreeMap<String, f64> = names
        .iter()
        .map(|q| {
            let v = match *q {
                q if q.starts_with("energy_import") => 10_000.0 + i as f64 + minute * 0.0173,
                q if q.ends_with("_kwh") || q.ends_with("_kvarh") => 12.5 + i as f64 * 0.01,
                q if q.starts_with("voltage") => 229.7 + (ts / MIN % 17) as f64 * 0.1,
                "frequency_hz" => 49.98,
                "power_factor" => 0.97,
                _ => 1.04 + (ts / MIN % 13) as f64 * 0.01,
            };
            // Three decimals, as decoded registers usually give.
            (q.to_string(), (v * 1000.0).round() / 1000.0)
        })
        .collect();
    Reading {
        meter: meter.into(),
        ts_ms: ts,
        values,
    }
}

/// What the subscriber saw.
#[derive(Default)]
struct Arrivals {
    /// One bit per seq.
    seen: Vec<u64>,
    total: u64,
    duplicates: u64,
    /// Arrivals whose seq is lower than one that arrived before it.
    out_of_order: u64,
    max_seq: u64,
    /// Backlog messages (lo < seq <= hi) received.
    backlog: u64,
    first: Option<Instant>,
    backlog_done: Option<Instant>,
    /// Live messages (seq > hi): (seq, reading ts ms, arrival wall ms).
    live: Vec<(u64, i64, i64)>,
}

impl Arrivals {
    fn record(&mut self, seq: u64, (lo, hi): (u64, u64), payload: &[u8]) {
        if seq <= lo {
            return; // delivered before the outage (a retained or re-sent message)
        }
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.total += 1;
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1 + 1024, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        if seq < self.max_seq {
            self.out_of_order += 1;
        }
        self.max_seq = self.max_seq.max(seq);
        if seq <= hi {
            self.backlog += 1;
            // Published in seq order: the last one ends the backlog (even if the gateway had
            // to drop older ones to keep its store bound).
            if seq == hi {
                self.backlog_done = Some(now);
            }
        } else {
            let json: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
            let ts = json["ts"]
                .as_str()
                .and_then(amr_gateway::clock::parse_rfc3339)
                .unwrap_or(0);
            self.live.push((seq, ts, amr_gateway::clock::now_ms()));
        }
    }

    fn missing(&self, (lo, hi): (u64, u64)) -> u64 {
        (lo + 1..=hi)
            .filter(|s| {
                self.seen
                    .get((s / 64) as usize)
                    .is_none_or(|w| w & (1 << (s % 64)) == 0)
            })
            .count() as u64
    }
}

/// The `seq` field of a reading payload, without parsing the rest.
fn seq_of(payload: &[u8]) -> Option<u64> {
    let key = b"\"seq\":";
    let at = payload.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = payload[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// A QoS 1 subscriber on `amr/gw/#` on its own thread and runtime, counting the sequenced
/// messages with `range.0 < seq <= range.1` as the backlog; returns once subscribed.
fn subscribe(port: u16, range: (u64, u64), arrivals: Arc<Mutex<Arrivals>>) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut options = MqttOptions::new("drain-bench", "127.0.0.1", port);
            options
                .set_keep_alive(Duration::from_secs(30))
                .set_max_packet_size(1024 * 1024, 1024 * 1024);
            let (client, mut eventloop) = AsyncClient::new(options, 64);
            client
                .subscribe("amr/gw/#", QoS::AtLeastOnce)
                .await
                .unwrap();
            let mut errors = 0;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Some(seq) = seq_of(&p.payload) {
                            arrivals.lock().unwrap().record(seq, range, &p.payload);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("subscriber: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("subscriber ready");
}

/// VmRSS and VmHWM of a process, in KiB.
fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Bytes per table (with its indexes) from SQLite's `dbstat`.
fn table_bytes(db: &std::path::Path) -> Vec<(String, u64)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT coalesce(m.tbl_name, d.name), sum(d.pgsize) FROM dbstat d \
             LEFT JOIN sqlite_master m ON m.name = d.name GROUP BY 1 ORDER BY 2 DESC",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// A meter's load-curve block of an hour from `start` (4 points of 15 minutes, the default
/// `[curve]`), its energy registers and instantaneous values as `reading` gives them.
fn curve_block(meter: &str, i: usize, start: i64, names: &[&str]) -> CurveBlock {
    let points = (0..4)
        .map(|k| {
            let ts = start + k * 15 * MIN;
            let r = reading(meter, i, ts, names);
            let (energy, instant) = r
                .values
                .into_iter()
                .partition(|(q, _)| q.ends_with("_kwh") || q.ends_with("_kvarh"));
            CurvePoint {
                ts_ms: ts,
                energy,
                instant,
                instant_ts_ms: ts + 7_000,
            }
        })
        .collect();
    CurveBlock {
        meter: meter.into(),
        start_ms: start,
        end_ms: start + HOUR,
        day: rfc3339_ms(start)[..10].to_string(),
        interval_min: 15,
        points,
    }
}

/// A kept message of the small kinds (freezes, voltage days and months, loss intervals,
/// collection, daily loss) whose record takes about `bytes` bytes, the size measured for its
/// kind in docs/benchmarks.md (g) before schema 7 (today's are 10–20 % smaller).
fn small_kept(topic: String, kind: &str, subject: &str, ts: i64, bytes: usize) -> Message {
    Message {
        topic,
        payload: serde_json::json!({
            "subject": subject,
            "ts": rfc3339_ms(ts),
            "kind_seq": kind,
            "figures": "7".repeat(bytes.saturating_sub(120)),
        })
        .into(),
        qos: 1,
        retain: false,
        sequenced: true,
    }
}

/// The small kept messages due at `at` (every 15 minutes the area's loss interval; at
/// midnight UTC a day's freeze and voltage day per meter, the collection report and the daily
/// loss; on the first of a month a monthly freeze and voltage month per meter).
fn push_small_kept(batch: &mut Batch, topics: &Topics, ids: &[String], at: i64) -> u64 {
    let mut n = 0;
    let mut push = |batch: &mut Batch, kind: RecordKind, subject: &str, m: Message| {
        batch.push_kept(kind, subject, at, m);
        n += 1;
    };
    if at % (15 * MIN) == 0 {
        push(
            batch,
            RecordKind::Loss,
            "T1",
            small_kept(topics.loss("T1"), "loss", "T1", at, 497),
        );
    }
    if at % DAY == 0 {
        for id in ids {
            push(
                batch,
                RecordKind::FreezeDay,
                id,
                small_kept(topics.freeze(id), "freeze", id, at, 635),
            );
            push(
                batch,
                RecordKind::VoltageDay,
                id,
                small_kept(topics.voltage(id), "voltage", id, at, 377),
            );
        }
        push(
            batch,
            RecordKind::Collection,
            "gw",
            small_kept(topics.collection(), "collection", "gw", at, 380),
        );
        push(
            batch,
            RecordKind::LossDay,
            "T1",
            small_kept(topics.loss_day("T1"), "loss_day", "T1", at, 332),
        );
        if rfc3339_ms(at)[8..10] == *"01" {
            for id in ids {
                push(
                    batch,
                    RecordKind::FreezeMonth,
                    id,
                    small_kept(topics.freeze(id), "freeze", id, at, 635),
                );
                push(
                    batch,
                    RecordKind::VoltageMonth,
                    id,
                    small_kept(topics.voltage_month(id), "voltage_month", id, at, 400),
                );
            }
        }
    }
    n
}

/// The kept messages the engines make during the outage at minute `at`: the curve blocks
/// of the hour that ended, and the small ones due. Returns how many.
fn push_outage_kept(
    batch: &mut Batch,
    topics: &Topics,
    ids: &[String],
    names: &[&str],
    at: i64,
) -> u64 {
    let mut n = 0;
    if at % HOUR == 0 {
        for (i, id) in ids.iter().enumerate() {
            let b = curve_block(id, i, at - HOUR, names);
            batch.push_kept(RecordKind::Curve, id, b.start_ms, curve_message(topics, &b));
            n += 1;
        }
    }
    n + push_small_kept(batch, topics, ids, at)
}

/// Builds, delivered (committed, then acknowledged), what a steady-state store keeps for
/// its retention before an outage starting at `outage`: curve blocks, voltage days and loss
/// intervals of the `history_days` (35) days up to it, daily freezes, collection reports and
/// daily losses of 62 days, monthly freezes and voltage months of 24 months. Returns how
/// many kept messages.
fn build_retention(
    store: &mut Store,
    topics: &Topics,
    ids: &[String],
    names: &[&str],
    outage: i64,
    now: i64,
) -> u64 {
    let history_from = now - 35 * DAY + DAY;
    let mut made = 0;
    let mut batch = Batch::default();
    let commit = |store: &mut Store, batch: &mut Batch| {
        let report = store.commit_at(&std::mem::take(batch), now).unwrap();
        store.ack(&report.outbox_ids).unwrap();
    };
    // Months: a day at a time over 24 months is 730 steps of the small kinds' check.
    let mut at = (now - 730 * DAY) / DAY * DAY;
    while at < outage {
        if at >= history_from {
            // From here on, every 15 minutes.
            break;
        }
        if rfc3339_ms(at)[8..10] == *"01" || at >= now - 62 * DAY {
            let mut day = Batch::default();
            made += push_small_kept(&mut day, topics, ids, at);
            // Before the 62 days of freezes only the monthly ones are kept; before the 35 days
            // of history no loss interval or voltage day.
            let months_only = at < now - 62 * DAY;
            let keep = |r: &Record| match r.kind {
                RecordKind::FreezeMonth | RecordKind::VoltageMonth => true,
                RecordKind::Loss | RecordKind::VoltageDay => false,
                _ => !months_only,
            };
            let kept: Vec<usize> = (0..day.records.len())
                .filter(|&k| keep(&day.records[k]))
                .collect();
            made -= (day.records.len() - kept.len()) as u64;
            day.records = kept.iter().map(|&k| day.records[k].clone()).collect();
            day.messages = kept.iter().map(|&k| day.messages[k].clone()).collect();
            batch.append(day);
        }
        at += DAY;
    }
    while at < outage {
        if at % HOUR == 0 && at > history_from {
            for (i, id) in ids.iter().enumerate() {
                let b = curve_block(id, i, at - HOUR, names);
                batch.push_kept(RecordKind::Curve, id, b.start_ms, curve_message(topics, &b));
                made += 1;
            }
        }
        if at % (15 * MIN) == 0 {
            made += push_small_kept(&mut batch, topics, ids, at);
        }
        if batch.messages.len() >= BUILD_BATCH {
            commit(store, &mut batch);
        }
        at += 15 * MIN;
    }
    if !batch.is_empty() {
        commit(store, &mut batch);
    }
    made
}

fn main() {
    let backlog = env("BACKLOG", 2_016_000);
    let meters = env("METERS", 200).max(1) as usize;
    let quantities =
        (env("QUANTITIES", QUANTITIES.len() as u64) as usize).clamp(1, QUANTITIES.len());
    let live = env("LIVE", 5).clamp(1, 247);
    let names: Vec<&str> = QUANTITIES[..quantities].to_vec();
    println!(
        "drain: backlog {backlog} messages, {meters} meters x {quantities} values, {live} live meters"
    );

    // 1. The store: the billing records a steady-state area keeps, delivered, then the
    //    outage's backlog.
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let db = dir.path().join("data").join("amr-gateway.db");
    let settings = StoreSettings {
        history_days: 35,
        max_size_mb: env("MAX_SIZE_MB", 1024),
        commit_window_ms: amr_gateway::store::COMMIT_WINDOW_MS,
    };
    let topics = Topics::new("amr", "gw");
    let ids: Vec<String> = (0..meters).map(|i| format!("b{i:04}")).collect();
    let minutes = backlog.div_ceil(meters as u64) as i64;
    let now = amr_gateway::clock::now_ms();
    // The outage starts on an hour, `minutes` ago.
    let t0 = (now - minutes * MIN - MIN) / HOUR * HOUR;
    let started = Instant::now();
    let built_bytes;
    let range;
    let (mut kept_backlog, mut readings_made) = (0u64, 0u64);
    {
        let mut store = Store::open(&db, &settings).unwrap();
        let retention = if env("RETENTION", 1) == 1 {
            let r = build_retention(&mut store, &topics, &ids, &names, t0, now);
            println!(
                "retention: {} kept messages delivered ({:.1} MiB live pages) in {:.1} s",
                r,
                store.used_bytes().unwrap() as f64 / 1048576.0,
                started.elapsed().as_secs_f64()
            );
            r
        } else {
            0
        };
        let before = store.last_seq().unwrap();
        let mut batch = Batch::default();
        'minutes: for k in 0..minutes {
            let minute = t0 + k * MIN;
            // What the engines keep during the outage, unsent like the readings: every
            // hour the meters' curve blocks, every 15 minutes the area's loss interval, every
            // day the freezes, voltage days, collection and daily loss.
            if retention > 0 && k > 0 {
                kept_backlog += push_outage_kept(&mut batch, &topics, &ids, &names, minute);
            }
            for (i, id) in ids.iter().enumerate() {
                if readings_made == backlog {
                    break 'minutes;
                }
                let ts = minute + (i as i64 * MIN / meters as i64);
                let r = reading(id, i, ts, &names);
                batch.messages.push(topics.reading_message(&r));
                batch.readings.push(r);
                readings_made += 1;
                if batch.messages.len() >= BUILD_BATCH {
                    store.commit_at(&std::mem::take(&mut batch), ts).unwrap();
                }
            }
        }
        if !batch.is_empty() {
            store.commit_at(&batch, now).unwrap();
        }
        store.checkpoint();
        let used = store.used_bytes().unwrap();
        built_bytes = used;
        range = (before, store.last_seq().unwrap());
        let file = std::fs::metadata(&db).unwrap().len();
        assert_eq!(
            store.backlog().unwrap().0,
            backlog + kept_backlog,
            "the backlog is stored"
        );
        println!(
            "store: built in {:.1} s; {:.1} MiB live pages against the bound of {} MiB \
             ({:.1} %), file {:.1} MiB; backlog {} readings and {} kept messages (seq {}..={})",
            started.elapsed().as_secs_f64(),
            used as f64 / 1048576.0,
            settings.max_size_mb,
            used as f64 / (settings.max_size_mb * 1048576) as f64 * 100.0,
            file as f64 / 1048576.0,
            backlog,
            kept_backlog,
            range.0 + 1,
            range.1
        );
    }
    let backlog_total = backlog + kept_backlog;
    for (table, bytes) in table_bytes(&db) {
        println!(
            "  {table:<16} {:>8.1} MiB  {:>6.0} bytes per backlog message",
            bytes as f64 / 1048576.0,
            bytes as f64 / backlog_total as f64
        );
    }

    // 2. The broker and the subscriber.
    let broker = support::Mosquitto::start();
    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    subscribe(broker.port, range, Arc::clone(&arrivals));

    // 3. Live meters and the gateway.
    let sims = support::SimRuntime::new();
    let mut sim = String::from("[[bus]]\nname = \"rs485\"\nlink = \"ttyRS485\"\nbaud = 19200\n");
    let mut config = format!(
        "[gateway]\nid = \"gw\"\ndata_dir = \"data\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nmax_inflight = {}\n\n\
         [[bus]]\nname = \"rs485\"\nprotocol = \"modbus-rtu\"\ndevice = \"ttyRS485\"\nbaud = 19200\n\
         timeout_ms = 300\npoll_interval_s = 1\n\n[store]\nmax_size_mb = {}\n",
        broker.port,
        env("MAX_INFLIGHT", 64),
        settings.max_size_mb
    );
    for unit in 1..=live {
        sim += &format!(
            "\n[[meter]]\nbus = \"rs485\"\nunit = {unit}\nmodel = \"eastron-sdm120\"\nload_kw = 2.5\n"
        );
        config += &format!(
            "\n[[meter]]\nid = \"live{unit}\"\nbus = \"rs485\"\nunit = {unit}\nmodel = \"eastron-sdm120\"\n"
        );
    }
    let _sim = sims.start(&sim, "drain-sim", dir.path());
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, config).unwrap();
    let drain_started = Instant::now();
    let drain_started_ms = amr_gateway::clock::now_ms();
    let mut gateway = GatewayProcess::start(&config_path, &dir.path().join("gateway.log"));
    let pid = gateway.0.id();

    let backlog = backlog_total;
    let limit = Duration::from_secs(120 + backlog / 500);
    let (mut peak_rss, mut samples) = (0u64, Vec::new());
    let mut last_report = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if let Some((rss, _)) = memory_kib(pid) {
            peak_rss = peak_rss.max(rss);
            samples.push(rss);
        }
        let (got, done) = {
            let a = arrivals.lock().unwrap();
            (a.backlog, a.backlog_done.is_some())
        };
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            println!(
                "  {:>5.0} s: {got} of {backlog} backlog messages, gateway RSS {:.1} MiB",
                drain_started.elapsed().as_secs_f64(),
                samples.last().copied().unwrap_or(0) as f64 / 1024.0
            );
        }
        if done {
            break;
        }
        if let Ok(Some(status)) = gateway.0.try_wait() {
            panic!(
                "the gateway exited ({status}):\n{}",
                support::log_tail(dir.path(), 30)
            );
        }
        assert!(
            drain_started.elapsed() < limit,
            "backlog not drained after {limit:?} ({got} of {backlog}):\n{}",
            support::log_tail(dir.path(), 30)
        );
    }
    let drained_ms = amr_gateway::clock::now_ms();
    let hwm_at_drain = memory_kib(pid).map_or(0, |m| m.1);
    // Live readings stored during the drain follow the backlog: wait for them to arrive.
    std::thread::sleep(Duration::from_secs(5));
    let hwm = memory_kib(pid).map_or(0, |m| m.1);
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = gateway.0.wait();

    // What the gateway's pruning at start did (docs/benchmarks.md (i), "over the bound").
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default();
    for line in log
        .lines()
        .filter(|l| l.contains("prun") || l.contains("store full"))
    {
        println!("gateway log: {line}");
    }
    let a = arrivals.lock().unwrap();
    let (first, done) = (a.first.unwrap(), a.backlog_done.unwrap());
    let span = done.duration_since(first).as_secs_f64();
    let missing = a.missing(range);
    println!(
        "drain: {} messages in {span:.1} s = {:.0} messages/s (first arrival {:.1} s after \
         the gateway started); missing {missing}, duplicates {}, out of order {}",
        a.backlog,
        a.backlog as f64 / span,
        first.duration_since(drain_started).as_secs_f64(),
        a.duplicates,
        a.out_of_order
    );
    samples.sort_unstable();
    let median = samples.get(samples.len() / 2).copied().unwrap_or(0);
    println!(
        "gateway memory during the drain: VmRSS peak {:.1} MiB, median {:.1} MiB \
         ({} samples); VmHWM {:.1} MiB at the end of the drain, {:.1} MiB 5 s later",
        peak_rss as f64 / 1024.0,
        median as f64 / 1024.0,
        samples.len(),
        hwm_at_drain as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    let during: Vec<_> = a
        .live
        .iter()
        .filter(|(_, ts, _)| (drain_started_ms..=drained_ms).contains(ts))
        .collect();
    let lag_max = during.iter().map(|(_, ts, at)| at - ts).max().unwrap_or(0);
    let after_backlog = a
        .live
        .iter()
        .filter(|(_, _, at)| *at >= drained_ms - 1000)
        .count();
    println!(
        "live readings: {} received, {} of them read during the drain (published after the \
         backlog, in seq order: {} arrived at or after the backlog's end); largest delay from \
         reading to arrival {:.1} s",
        a.live.len(),
        during.len(),
        after_backlog,
        lag_max as f64 / 1000.0
    );
    if missing > 0 {
        println!(
            "{missing} backlog messages never arrived: the store was over its bound \
             ({} MiB), so the gateway dropped the oldest unsent ones (its log says so)",
            settings.max_size_mb
        );
    }
    assert!(
        missing == 0 || built_bytes > settings.max_size_mb * 1024 * 1024,
        "every backlog seq arrives when the backlog fits the bound"
    );
    assert!(
        !during.is_empty(),
        "live readings were stored during the drain"
    );
    drop(a);

    let store = Store::open(&db, &settings).unwrap();
    let used = store.used_bytes().unwrap();
    println!(
        "store after the drain: {} rows waiting, {:.1} MiB live pages ({:.0} bytes per \
         delivered reading: history and recall copy)",
        store.backlog().unwrap().0,
        used as f64 / 1048576.0,
        used as f64 / backlog as f64
    );
    for (table, bytes) in table_bytes(&db) {
        println!(
            "  {table:<16} {:>8.1} MiB  {:>6.0} bytes per message",
            bytes as f64 / 1048576.0,
            bytes as f64 / backlog as f64
        );
    }
}

/// `amr-gateway run --config FILE`, its log in `log`; SIGKILLed on drop.
struct GatewayProcess(std::process::Child);

impl GatewayProcess {
    fn start(config: &std::path::Path, log: &std::path::Path) -> GatewayProcess {
        let log = std::fs::File::create(log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_amr-gateway"))
            .args(["run", "--config"])
            .arg(config)
            .env("AMR_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start amr-gateway run");
        GatewayProcess(child)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
