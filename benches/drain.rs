//! Draining a long outage (issue 14, "hold a long outage"): how fast a week of backlog
//! reaches a local mosquitto once the broker is back, how much memory the gateway takes
//! meanwhile, and how many bytes each waiting message takes in the store.
//!
//! 1. A store is filled through the real API: `BACKLOG` reading messages (made by
//!    `Topics::reading_message`, committed with `Store::commit_at` as the writer does, with
//!    their history rows), `METERS` meters read once a minute, the oldest first — as a
//!    broker outage of `BACKLOG / METERS` minutes leaves it.
//! 2. A real mosquitto (the tests' configuration, tests/support) and a QoS 1 subscriber on
//!    `amr/gw/#`, on its own thread, that counts arrivals by `seq` (each must arrive once).
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
//! `BACKLOG`, default 2,000,000; `METERS`, default 200; `QUANTITIES`, values per reading,
//! default 26 = every contract quantity; `LIVE`, default 5; `MAX_SIZE_MB`, the store bound,
//! default 1024 as in the configuration: a backlog over it is pruned by the gateway at start,
//! and then its oldest messages never arrive; `MAX_INFLIGHT`, the gateway's
//! `[mqtt] max_inflight`, default 64 as in the configuration). Results: docs/benchmarks.md (i).

#[path = "../tests/support/mod.rs"]
mod support;

use amr_gateway::model::{QUANTITIES, Reading};
use amr_gateway::store::{Batch, Store, StoreSettings};
use amr_gateway::uplink::contract::Topics;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIN: i64 = 60_000;
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
    /// Backlog messages (seq <= backlog) received.
    backlog: u64,
    first: Option<Instant>,
    backlog_done: Option<Instant>,
    /// Live messages (seq > backlog): (seq, reading ts ms, arrival wall ms).
    live: Vec<(u64, i64, i64)>,
}

impl Arrivals {
    fn record(&mut self, seq: u64, backlog: u64, payload: &[u8]) {
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
        if seq <= backlog {
            self.backlog += 1;
            // Published in seq order: the last one ends the backlog (even if the gateway had
            // to drop older ones to keep its store bound).
            if seq == backlog {
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

    fn missing(&self, last: u64) -> u64 {
        (1..=last)
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

/// A QoS 1 subscriber on `amr/gw/reading/#` on its own thread and runtime; returns once
/// subscribed.
fn subscribe(port: u16, backlog: u64, arrivals: Arc<Mutex<Arrivals>>) {
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
                .subscribe("amr/gw/reading/#", QoS::AtLeastOnce)
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
                            arrivals.lock().unwrap().record(seq, backlog, &p.payload);
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

fn main() {
    let backlog = env("BACKLOG", 2_000_000);
    let meters = env("METERS", 200).max(1) as usize;
    let quantities =
        (env("QUANTITIES", QUANTITIES.len() as u64) as usize).clamp(1, QUANTITIES.len());
    let live = env("LIVE", 5).clamp(1, 247);
    let names: Vec<&str> = QUANTITIES[..quantities].to_vec();
    println!(
        "drain: backlog {backlog} messages, {meters} meters x {quantities} values, {live} live meters"
    );

    // 1. The store with its backlog.
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
    let t0 = (now - minutes * MIN - MIN) / MIN * MIN;
    let started = Instant::now();
    let built_bytes;
    {
        let mut store = Store::open(&db, &settings).unwrap();
        let mut batch = Batch::default();
        let mut made = 0;
        'minutes: for k in 0..minutes {
            for (i, id) in ids.iter().enumerate() {
                if made == backlog {
                    break 'minutes;
                }
                let ts = t0 + k * MIN + (i as i64 * MIN / meters as i64);
                let r = reading(id, i, ts, &names);
                batch.messages.push(topics.reading_message(&r));
                batch.readings.push(r);
                made += 1;
                if batch.readings.len() == BUILD_BATCH {
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
        let file = std::fs::metadata(&db).unwrap().len();
        assert_eq!(store.backlog().unwrap().0, backlog, "the backlog is stored");
        println!(
            "store: built in {:.1} s; {:.1} MiB live pages ({:.0} bytes per message), file {:.1} MiB",
            started.elapsed().as_secs_f64(),
            used as f64 / 1048576.0,
            used as f64 / backlog as f64,
            file as f64 / 1048576.0
        );
    }
    for (table, bytes) in table_bytes(&db) {
        println!(
            "  {table:<16} {:>8.1} MiB  {:>6.0} bytes per message",
            bytes as f64 / 1048576.0,
            bytes as f64 / backlog as f64
        );
    }

    // 2. The broker and the subscriber.
    let broker = support::Mosquitto::start();
    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    subscribe(broker.port, backlog, Arc::clone(&arrivals));

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

    let a = arrivals.lock().unwrap();
    let (first, done) = (a.first.unwrap(), a.backlog_done.unwrap());
    let span = done.duration_since(first).as_secs_f64();
    let missing = a.missing(backlog);
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
