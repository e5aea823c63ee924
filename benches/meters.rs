//! A thousand meters on one gateway (issue 14, item 3): the real `amr-gateway` binary as a
//! process, measured from outside.
//!
//! 1. **Load.** `amr-gateway simulate` serves 1000 Eastron SDM630 on 10 Modbus TCP buses (one
//!    transformer area: a supply meter behind 1000/5 A CTs and 999 residential customers);
//!    `amr-gateway run` polls every meter once a minute and publishes to a real mosquitto on a
//!    free loopback port; a subscriber counts the reading messages. Over `MEASURE_MIN` minutes
//!    after `WARMUP_MIN` minutes: the gateway's resident memory (VmRSS sampled every 5 s, VmHWM
//!    at the end), its CPU time (utime + stime, /proc/PID/stat) per reading and as a share of
//!    one core, the readings received; the simulator's CPU apart (it is not the gateway's cost).
//! 2. **Start-up.** The same configuration over a store already holding `HISTORY_H` hours of
//!    every meter's readings (written through the real `Store`): from the spawn to the first
//!    reading message at the subscriber, and to the systemd `READY=1` on a `NOTIFY_SOCKET` the
//!    bench listens on; median of `STARTUP_RUNS` runs.
//! 3. **check-config** of a generated file of 2000 meters on 20 buses in 10 areas: wall and CPU
//!    time of the process, median of `CHECK_RUNS` runs.
//!
//! 4. **Heap** (diagnosis, in this process): the heap the configuration and each analytics
//!    engine hold with 1000 meters after `HEAP_MIN` (20) minutes of readings through the real
//!    pipeline `Writer`, weighed with a counting allocator (a deep copy of each engine, and
//!    what dropping the `Writer` frees), and the time in the writer's fold per reading; with
//!    the daemon's allocator settings (one glibc arena, a fixed mmap threshold), the largest
//!    heap a fold took above what was held before it, and this process's anonymous resident
//!    memory after a `malloc_trim` each simulated minute (with the heap in use beside it): a
//!    step that stays after a large transient shows here in seconds, not after half an hour
//!    of the load.
//!
//! Run with `CARGO_PROFILE_RELEASE_LTO=off cargo bench --bench meters` (environment:
//! `WARMUP_MIN` 3, `MEASURE_MIN` 10, `HISTORY_H` 24, `STARTUP_RUNS` 5, `CHECK_RUNS` 7, `GATEWAY_ENV` extra
//! environment of the gateway, `LOAD_TZ` the gateway's time zone (default Asia/Shanghai), `PARTS`
//! a comma list of `check`, `heap`, `startup`, `load`, default all four). Results go in
//! docs/benchmarks.md (j).

#[path = "../tests/support/mod.rs"]
mod support;

use amr_gateway::config::load_str;
use amr_gateway::model::Reading;
use amr_gateway::store::{Batch, Store};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Mosquitto, free_port, wait_for_listener};

/// Counts the heap this process holds, so part 4 can weigh the analytics engines.
struct Counting;

static LIVE: AtomicU64 = AtomicU64::new(0);
/// The most heap held since it was last reset (see [`reset_peak`]).
static PEAK: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size() as u64, Ordering::Relaxed) + layout.size() as u64;
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        let now = LIVE.fetch_add(new as u64, Ordering::Relaxed) + new as u64;
        PEAK.fetch_max(now, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes of heap held now.
fn live() -> u64 {
    LIVE.load(Ordering::Relaxed)
}

/// Starts a new peak at the heap held now; returns that.
fn reset_peak() -> u64 {
    let now = live();
    PEAK.store(now, Ordering::Relaxed);
    now
}

/// A field of this process's `/proc/self/status` (`RssAnon`, `VmRSS`, `VmHWM`), kB.
fn status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Starts a new resident high-water mark (`VmHWM`) at the resident size now; returns that, kB.
fn reset_hwm() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    status_kb("VmRSS")
}

/// The heap a value holds: what a deep copy of it allocates.
fn weigh<T: Clone>(v: &T) -> u64 {
    let before = live();
    let copy = v.clone();
    let size = live().saturating_sub(before);
    drop(copy);
    size
}

const METERS: usize = 1000;
const BUSES: usize = 10;
const BIN: &str = env!("CARGO_BIN_EXE_amr-gateway");

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn meter_id(i: usize) -> String {
    format!("m{i:04}")
}

/// The simulator's file: 10 Modbus TCP buses of 100 meters on the given ports, one area.
fn sim_file(ports: &[u16]) -> String {
    let mut t = String::from("[area]\nid = \"T1\"\nloss_coeff = 0.00004\nno_load_loss_kw = 1.5\n");
    for (b, port) in ports.iter().enumerate() {
        writeln!(
            t,
            "\n[[bus]]\nname = \"tcp-{b}\"\nprotocol = \"modbus-tcp\"\nlisten = \"127.0.0.1:{port}\""
        )
        .unwrap();
    }
    for i in 0..METERS {
        let (bus, unit) = (i % BUSES, i / BUSES + 1);
        write!(
            t,
            "\n[[meter]]\nid = \"{}\"\nbus = \"tcp-{bus}\"\nunit = {unit}\nmodel = \"eastron-sdm630\"\n",
            meter_id(i)
        )
        .unwrap();
        if i == 0 {
            t.push_str("role = \"supply\"\nmultiplier = 200\nenergy_start_kwh = 5000\n");
        } else {
            writeln!(
                t,
                "role = \"customer\"\nprofile = \"residential\"\nseed = {i}\nload_kw = {:.1}\n\
                 energy_start_kwh = {}",
                0.6 + (i % 7) as f64 * 0.2,
                1000 + i
            )
            .unwrap();
        }
    }
    t
}

/// The gateway's file for the simulator of [`sim_file`]: every meter read once a minute.
fn gateway_file(mqtt_port: u16, ports: &[u16]) -> String {
    // `LOAD_TZ`: another zone brings its midnight (the day's freezes, voltage days and
    // decision) into the run without libfaketime, e.g. under a heap profiler.
    let zone = std::env::var("LOAD_TZ").unwrap_or_else(|_| "Asia/Shanghai".into());
    let mut t = format!(
        "[gateway]\nid = \"gw1\"\ndata_dir = \"data\"\ntimezone = \"{zone}\"\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt_port}\n"
    );
    for (b, port) in ports.iter().enumerate() {
        writeln!(
            t,
            "\n[[bus]]\nname = \"tcp-{b}\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{port}\"\n\
             poll_interval_s = 60"
        )
        .unwrap();
    }
    for i in 0..METERS {
        write!(
            t,
            "\n[[meter]]\nid = \"{}\"\nbus = \"tcp-{}\"\nunit = {}\nmodel = \"eastron-sdm630\"\n",
            meter_id(i),
            i % BUSES,
            i / BUSES + 1
        )
        .unwrap();
        if i == 0 {
            t.push_str("multiplier = 200\nrated_kw = 630\n");
        }
    }
    let customers: Vec<String> = (1..METERS)
        .map(|i| format!("\"{}\"", meter_id(i)))
        .collect();
    writeln!(
        t,
        "\n[[area]]\nid = \"T1\"\nsupply = [\"{}\"]\ncustomers = [{}]\nrated_kva = 630",
        meter_id(0),
        customers.join(", ")
    )
    .unwrap();
    t
}

/// A gateway file of 2000 meters on 20 Modbus TCP buses in 10 areas of 200 (a supply meter
/// behind CTs and 199 customers each), two models.
fn check_file() -> String {
    let mut t = String::from(
        "[gateway]\nid = \"gw-big\"\ndata_dir = \"data\"\ntimezone = \"Asia/Shanghai\"\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\n",
    );
    for b in 0..20 {
        writeln!(
            t,
            "\n[[bus]]\nname = \"tcp-{b}\"\nprotocol = \"modbus-tcp\"\naddress = \"10.0.{b}.1:502\"\n\
             poll_interval_s = 60"
        )
        .unwrap();
    }
    for i in 0..2000 {
        let model = if i % 3 == 0 {
            "chint-dtsu666"
        } else {
            "eastron-sdm630"
        };
        write!(
            t,
            "\n[[meter]]\nid = \"m{i:04}\"\nbus = \"tcp-{}\"\nunit = {}\nmodel = \"{model}\"\n",
            i % 20,
            i / 20 + 1
        )
        .unwrap();
        if i % 200 == 0 {
            t.push_str("multiplier = 200\nrated_kw = 630\n");
        }
    }
    for a in 0..10 {
        let customers: Vec<String> = (a * 200 + 1..(a + 1) * 200)
            .map(|i| format!("\"m{i:04}\""))
            .collect();
        writeln!(
            t,
            "\n[[area]]\nid = \"T{a}\"\nsupply = [\"m{:04}\"]\ncustomers = [{}]\nrated_kva = 630",
            a * 200,
            customers.join(", ")
        )
        .unwrap();
    }
    t
}

/// Clock ticks per second of /proc/PID/stat's times.
fn ticks_per_s() -> f64 {
    // SAFETY: sysconf reads a constant.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// utime + stime of a process, seconds.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / ticks_per_s()
}

/// A `Vm*` line of /proc/PID/status, kB.
fn vm_kb(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// A process killed (SIGKILL) on drop; `stop` ends it with SIGTERM.
struct Proc(Child);

impl Proc {
    fn spawn(args: &[&str], config: &Path, log: &Path, extra: &[(String, String)]) -> Proc {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Proc(cmd.spawn().expect("start amr-gateway"))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn stop(mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An MQTT subscriber (clean session) counting the reading messages and noting when the first
/// one arrived.
struct Counter {
    count: Arc<AtomicU64>,
    first: Arc<Mutex<Option<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Counter {
    fn start(rt: &tokio::runtime::Runtime, port: u16, client_id: &str) -> Counter {
        let count = Arc::new(AtomicU64::new(0));
        let first = Arc::new(Mutex::new(None));
        let subscribed = Arc::new(AtomicBool::new(false));
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20);
        let task = rt.spawn({
            let (count, first, subscribed) = (count.clone(), first.clone(), subscribed.clone());
            async move {
                let (client, mut events) = AsyncClient::new(options, 1024);
                loop {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client.try_subscribe("amr/gw1/reading/+", QoS::AtLeastOnce);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            subscribed.store(true, Ordering::SeqCst)
                        }
                        Ok(Event::Incoming(Packet::Publish(_))) => {
                            first.lock().unwrap().get_or_insert_with(Instant::now);
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while !subscribed.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "subscriber not subscribed");
            std::thread::sleep(Duration::from_millis(10));
        }
        Counter { count, first, task }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    fn first(&self) -> Option<Instant> {
        *self.first.lock().unwrap()
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `GATEWAY_ENV="K=V K2=V2"`: extra environment of the gateway process (e.g.
/// `MALLOC_ARENA_MAX=1`, for experiments).
fn gateway_env() -> Vec<(String, String)> {
    std::env::var("GATEWAY_ENV")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The simulator, mosquitto and the gateway's configuration, shared by parts 1 and 2.
struct Rig {
    dir: tempfile::TempDir,
    config: PathBuf,
    broker: Mosquitto,
    sim: Proc,
}

impl Rig {
    fn start() -> Rig {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let ports: Vec<u16> = (0..BUSES).map(|_| free_port()).collect();
        let sim_path = dir.path().join("sim.toml");
        std::fs::write(&sim_path, sim_file(&ports)).unwrap();
        let sim = Proc::spawn(&["simulate"], &sim_path, &dir.path().join("sim.log"), &[]);
        for p in &ports {
            wait_for_listener(*p, Duration::from_secs(60));
        }
        let broker = Mosquitto::start();
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, gateway_file(broker.port, &ports)).unwrap();
        Rig {
            dir,
            config,
            broker,
            sim,
        }
    }

    fn gateway(&self, notify: Option<&Path>) -> Proc {
        let mut extra = gateway_env();
        if let Some(p) = notify {
            extra.push(("NOTIFY_SOCKET".into(), p.display().to_string()));
        }
        Proc::spawn(
            &["run"],
            &self.config,
            &self.dir.path().join("gateway.log"),
            &extra,
        )
    }

    fn log_tail(&self) -> String {
        support::log_tail(self.dir.path(), 20)
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Children's user + system CPU time so far (the processes this bench has waited for), s.
fn children_cpu_s() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(ru.ru_utime) + s(ru.ru_stime)
}

fn check_config(runs: u64) {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let path = dir.path().join("big.toml");
    let text = check_file();
    std::fs::write(&path, &text).unwrap();
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let c0 = children_cpu_s();
        let t0 = Instant::now();
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .expect("run check-config");
        wall.push(t0.elapsed().as_secs_f64());
        cpu.push(children_cpu_s() - c0);
        assert!(
            out.status.success(),
            "check-config refused the generated file:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "check-config, 2000 meters / 20 buses / 10 areas ({} lines, {} kB): median of {runs}: \
         wall {:.0} ms, CPU {:.0} ms (runs: wall {:?} ms)",
        text.lines().count(),
        text.len() / 1024,
        median(&mut wall) * 1e3,
        median(&mut cpu) * 1e3,
        wall.iter().map(|w| (w * 1e3).round()).collect::<Vec<_>>()
    );
}

/// Writes `hours` of once-a-minute readings of every meter, ending now, through the real store.
fn fill_history(config_path: &Path, hours: u64) -> (u64, f64) {
    let text = std::fs::read_to_string(config_path).unwrap();
    let config = load_str(&text, config_path).expect("the bench's configuration");
    std::fs::create_dir_all(config.db_path().parent().unwrap()).unwrap();
    let mut store = Store::open(&config.db_path(), &config.store).unwrap();
    let now = amr_gateway::clock::now_ms();
    let minutes = hours as i64 * 60;
    let ids: Vec<String> = (0..METERS).map(meter_id).collect();
    let t0 = Instant::now();
    for k in 0..minutes {
        let minute = now - (minutes - k) * 60_000;
        let readings = ids
            .iter()
            .enumerate()
            .map(|(i, id)| reading(id, i, minute + (i as i64 * 60) % 60_000, k))
            .collect();
        let batch = Batch {
            readings,
            ..Batch::default()
        };
        store.commit_at(&batch, minute).unwrap();
    }
    store.checkpoint();
    drop(store);
    let size = std::fs::metadata(config.db_path()).map_or(0, |m| m.len());
    (size, t0.elapsed().as_secs_f64())
}

/// What an SDM630 reading carries, roughly (the values do not matter for the cost).
fn reading(meter: &str, i: usize, ts: i64, k: i64) -> Reading {
    let kw = 0.5 + (i % 10) as f64 * 0.1;
    let mut values = BTreeMap::new();
    for q in amr_gateway::model::QUANTITIES {
        let v = match *q {
            q if q.starts_with("energy_import") => 1000.0 + i as f64 + kw * k as f64 / 60.0,
            q if q.ends_with("_kwh") || q.ends_with("_kvarh") => 12.5,
            q if q.starts_with("voltage") => 229.7 + (k % 7) as f64 * 0.1,
            "frequency_hz" => 49.98,
            "power_factor" => 0.97,
            _ => kw / 3.0 + (k % 5) as f64 * 0.01,
        };
        values.insert(q.to_string(), v);
    }
    Reading {
        meter: meter.into(),
        ts_ms: ts,
        values,
    }
}

/// Listens on a NOTIFY_SOCKET and notes when `READY=1` arrives.
fn notify_listener(path: &Path) -> Arc<Mutex<Option<Instant>>> {
    let _ = std::fs::remove_file(path);
    let socket = std::os::unix::net::UnixDatagram::bind(path).expect("bind NOTIFY_SOCKET");
    let ready = Arc::new(Mutex::new(None));
    std::thread::spawn({
        let ready = ready.clone();
        move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
                {
                    ready.lock().unwrap().get_or_insert_with(Instant::now);
                }
            }
        }
    });
    ready
}

fn startup(rt: &tokio::runtime::Runtime, rig: &Rig, runs: u64, hours: u64) {
    let (size, took) = fill_history(&rig.config, hours);
    println!(
        "start-up: store filled with {hours} h of {METERS} meters' readings ({} readings) in \
         {took:.0} s: database file {:.0} MB",
        hours * 60 * METERS as u64,
        size as f64 / 1e6
    );
    // What the gateway does first with its store, timed apart: open, then `PRAGMA quick_check`
    // over the whole file (Store::open_or_recover), whose cost grows with the file.
    {
        let text = std::fs::read_to_string(&rig.config).unwrap();
        let config = load_str(&text, &rig.config).unwrap();
        let t = Instant::now();
        let store = Store::open(&config.db_path(), &config.store).unwrap();
        let opened = t.elapsed();
        store.quick_check().expect("the filled store is sound");
        println!(
            "  Store::open {:.0} ms, then PRAGMA quick_check {:.0} ms (in this process)",
            opened.as_secs_f64() * 1e3,
            (t.elapsed() - opened).as_secs_f64() * 1e3
        );
    }
    let (mut first, mut ready, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let sock = rig.dir.path().join(format!("notify-{run}.sock"));
        let notified = notify_listener(&sock);
        let counter = Counter::start(rt, rig.broker.port, &format!("startup-{run}"));
        let t0 = Instant::now();
        let gw = rig.gateway(Some(&sock));
        let deadline = t0 + Duration::from_secs(300);
        while counter.first().is_none() {
            assert!(
                Instant::now() < deadline,
                "no reading within 300 s of the start\n{}",
                rig.log_tail()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let at = counter.first().unwrap() - t0;
        let cpu_at = cpu_s(gw.pid());
        let rss = vm_kb(gw.pid(), "VmRSS");
        first.push(at.as_secs_f64());
        cpu.push(cpu_at);
        let r = notified.lock().unwrap().map(|r| (r - t0).as_secs_f64());
        if let Some(r) = r {
            ready.push(r);
        }
        println!(
            "  run {run}: first reading after {:.0} ms (gateway CPU {:.0} ms, RSS {} kB); \
             READY=1 after {}",
            at.as_secs_f64() * 1e3,
            cpu_at * 1e3,
            rss,
            r.map_or("-".into(), |r| format!("{:.0} ms", r * 1e3))
        );
        gw.stop();
    }
    println!(
        "start-up, {hours} h of history: median of {runs}: first reading {:.0} ms (gateway CPU \
         {:.0} ms), READY=1 {}",
        median(&mut first) * 1e3,
        median(&mut cpu) * 1e3,
        if ready.is_empty() {
            "not seen".into()
        } else {
            format!("{:.0} ms", median(&mut ready) * 1e3)
        }
    );
}

fn load(rt: &tokio::runtime::Runtime, rig: &Rig, warmup: u64, measure: u64) {
    let counter = Counter::start(rt, rig.broker.port, "load");
    let gw = rig.gateway(None);
    std::thread::sleep(Duration::from_secs(warmup * 60));
    let (n0, g0, s0, t0) = (
        counter.count(),
        cpu_s(gw.pid()),
        cpu_s(rig.sim.pid()),
        Instant::now(),
    );
    let end = t0 + Duration::from_secs(measure * 60);
    let (mut rss_max, mut rss_sum, mut samples) = (0u64, 0u64, 0u64);
    let mut by_minute = Vec::new();
    while Instant::now() < end {
        let rss = vm_kb(gw.pid(), "VmRSS");
        rss_max = rss_max.max(rss);
        rss_sum += rss;
        if samples % 12 == 0 {
            by_minute.push(format!("{:.1}", rss as f64 / 1024.0));
        }
        samples += 1;
        std::thread::sleep(Duration::from_secs(5));
    }
    let wall = t0.elapsed().as_secs_f64();
    let readings = counter.count() - n0;
    let (gcpu, scpu) = (cpu_s(gw.pid()) - g0, cpu_s(rig.sim.pid()) - s0);
    let (hwm, rss_end) = (vm_kb(gw.pid(), "VmHWM"), vm_kb(gw.pid(), "VmRSS"));
    let per = |c: f64| c * 1e6 / readings.max(1) as f64;
    println!(
        "load: {METERS} meters on {BUSES} Modbus TCP buses, once a minute; {measure} min measured \
         after {warmup} min"
    );
    println!(
        "  readings received {readings} ({:.1}/s; expected {:.0})",
        readings as f64 / wall,
        wall / 60.0 * METERS as f64
    );
    println!(
        "  gateway RSS: mean {:.1} MB, max sampled {:.1} MB, at the end {:.1} MB, VmHWM {:.1} MB",
        rss_sum as f64 / samples.max(1) as f64 / 1024.0,
        rss_max as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!("  gateway RSS each minute, MB: {}", by_minute.join(" "));
    println!(
        "  gateway CPU {gcpu:.2} s: {:.0} us per reading, {:.2} % of a core",
        per(gcpu),
        gcpu / wall * 100.0
    );
    println!(
        "  simulator CPU {scpu:.2} s: {:.0} us per reading, {:.2} % of a core",
        per(scpu),
        scpu / wall * 100.0
    );
    assert!(readings > 0, "no readings\n{}", rig.log_tail());
    gw.stop();
}

/// Part 4, in this process: the heap the gateway's configuration and its analytics hold with
/// 1000 meters, the pipeline `Writer` fed `minutes` of once-a-minute readings of every meter.
fn heap(minutes: i64) {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let path = dir.path().join("gateway.toml");
    let ports: Vec<u16> = (0..BUSES).map(|b| 5020 + b as u16).collect();
    let text = gateway_file(1883, &ports);
    let h0 = live();
    let config = load_str(&text, &path).expect("the bench's configuration");
    let h_config = live() - h0;
    let plans = config.bus_settings();
    let h_plans = weigh(&plans);
    drop(plans);
    let mut store = Store::open(&config.db_path(), &config.store).unwrap();
    // `HEAP_T0_S`: seconds after a quarter hour the readings start (a first loss interval
    // the gateway sees only in part, as after a start at any time).
    let t0 = amr_gateway::clock::parse_rfc3339("2026-11-22T16:00:00Z").unwrap()
        + env("HEAP_T0_S", 0) as i64 * 1000;
    let h1 = live();
    let (mut writer, batch) = amr_gateway::pipeline::Writer::start(
        &config.pipeline_settings(),
        amr_gateway::uplink::contract::Topics::new("amr", "gw1"),
        &store,
        t0,
    )
    .unwrap();
    let h_start = live() - h1;
    store.commit_at(&batch, t0).unwrap();
    let ids: Vec<String> = (0..METERS).map(meter_id).collect();
    // `HEAP_BURST=1`: every meter's reading of a minute arrives within its 37th second, as the
    // gateway's polls deliver them (folds of up to 256); otherwise spread over the minute.
    // As the daemon does, the events' batch is committed before a quiet second's tick is made
    // (the tick goes with the events only when the last was 5 s ago or more);
    // `HEAP_JOINED=1`: every fold with a tick, one batch (as before 2026-11-30).
    let burst = env("HEAP_BURST", 0) == 1;
    let split = env("HEAP_JOINED", 0) != 1;
    let mut last_tick = t0;
    let slot = 60_000 / METERS as i64;
    let mut events = Vec::new();
    // Time in the writer's fold (the engines and the batch they fill; not the commit).
    let mut folding = Duration::ZERO;
    // Each fold's highest heap above what was held before it and highest resident size
    // (fold and commit) above the resident size before it, with the fold's time and the
    // engine state it wrote.
    let mut transients: Vec<(u64, u64, i64, usize, usize)> = Vec::new();
    // The gateway's allocator settings (src/main.rs), and the anonymous resident memory after
    // its trim, each simulated minute.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    let mut anon = Vec::new();
    let mut step = |events: &mut Vec<amr_gateway::bus::BusEvent>, now: i64, tick: bool| {
        let base = reset_peak();
        let rss = reset_hwm();
        let mut meta = (0, 0);
        let mut weigh_meta = |b: &Batch| {
            meta.0 += b.meta.len();
            meta.1 += b.meta.iter().map(|(_, v)| v.len()).sum::<usize>();
        };
        let started = Instant::now();
        if split {
            let fold = if now - last_tick >= 5_000 {
                last_tick = now;
                writer.fold(events.drain(..), now)
            } else {
                writer.fold_events(events.drain(..))
            };
            folding += started.elapsed();
            weigh_meta(&fold.batch);
            if !fold.batch.is_empty() {
                store.commit_at(&fold.batch, now).unwrap();
            }
            drop(fold);
            if tick {
                let started = Instant::now();
                last_tick = now;
                let batch = writer.tick(now);
                folding += started.elapsed();
                weigh_meta(&batch);
                store.commit_at(&batch, now).unwrap();
            }
        } else {
            let fold = writer.fold(events.drain(..), now);
            folding += started.elapsed();
            weigh_meta(&fold.batch);
            store.commit_at(&fold.batch, now).unwrap();
        }
        let transient = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        let resident = status_kb("VmHWM").saturating_sub(rss) * 1024;
        transients.push((transient, resident, now - t0, meta.0, meta.1));
    };
    for minute in 0..minutes {
        let start = t0 + minute * 60_000;
        let at = |i: usize| {
            if burst {
                start + 36_000 + i as i64
            } else {
                start + i as i64 * slot
            }
        };
        let mut i = 0;
        for second in 1..=60 {
            let now = start + second * 1000;
            while i < METERS && at(i) < now {
                events.push(amr_gateway::bus::BusEvent::Reading(reading(
                    &ids[i],
                    i,
                    at(i),
                    minute,
                )));
                i += 1;
                if events.len() == 256 {
                    step(&mut events, at(i - 1) + 1, false);
                }
            }
            step(&mut events, now, true);
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        unsafe {
            libc::malloc_trim(0);
        }
        anon.push((status_kb("RssAnon"), live() / 1000));
    }
    let a = writer.analytics();
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "  this process's anonymous resident memory after a trim, each minute, MB: {}",
        anon.iter()
            .map(|(kb, heap)| format!("{:.1}/{:.1}", *kb as f64 / 1000.0, *heap as f64 / 1000.0))
            .collect::<Vec<_>>()
            .join(" ")
    );
    transients.sort_unstable_by(|a, b| b.cmp(a));
    for (bytes, _, at, n, meta) in transients.iter().take(6) {
        println!(
            "  a fold's transient heap: {:.2} MB at {:.1} min ({n} engine-state values, {:.2} MB)",
            mb(*bytes),
            *at as f64 / 60_000.0,
            mb(*meta as u64)
        );
    }
    transients.sort_unstable_by_key(|t| std::cmp::Reverse(t.1));
    for (_, bytes, at, n, meta) in transients.iter().take(6) {
        println!(
            "  a fold's and its commit's resident rise (VmHWM): {:.2} MB at {:.2} min ({n} \
             engine-state values, {:.2} MB)",
            mb(*bytes),
            *at as f64 / 60_000.0,
            mb(*meta as u64)
        );
    }
    println!(
        "  the writer's fold (engines and batches, no commit): {:.1} us per reading (wall time \
         of this thread)",
        folding.as_secs_f64() * 1e6 / (minutes * METERS as i64) as f64
    );
    println!(
        "heap (in-process, counting allocator), {METERS} meters, after {minutes} min of readings:"
    );
    println!(
        "  configuration {:.1} MB; buses and meter plans {:.1} MB; Writer at start {:.1} MB; engines now: loss {:.2} MB, alarms \
         {:.2} MB, voltage {:.2} MB, freeze {:.2} MB, curve {:.2} MB",
        mb(h_config),
        mb(h_plans),
        mb(h_start),
        mb(weigh(a.loss())),
        mb(weigh(a.alarms())),
        mb(weigh(a.voltage())),
        mb(weigh(a.freeze())),
        mb(weigh(a.curve()))
    );
    // What the deep copies above do not see: the spare capacity of the engines' vectors and
    // maps as they grew. Dropping the writer frees everything it holds.
    let held = live();
    drop(writer);
    println!(
        "  heap held by this process now: {:.1} MB, of which the Writer (its engines with their \
         spare capacity, and the rest) {:.2} MB",
        mb(held),
        mb(held.saturating_sub(live()))
    );
}

fn main() {
    let parts = std::env::var("PARTS").unwrap_or_else(|_| "check,heap,startup,load".into());
    let want = |p: &str| parts.split(',').any(|x| x.trim() == p);
    println!("meters bench: {BIN}");
    if want("check") {
        check_config(env("CHECK_RUNS", 7).max(1));
    }
    if want("heap") {
        heap(env("HEAP_MIN", 20) as i64);
    }
    if !want("startup") && !want("load") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    if want("load") {
        // A fresh store, so the figures are the steady state of a running gateway.
        let rig = Rig::start();
        load(&rt, &rig, env("WARMUP_MIN", 3), env("MEASURE_MIN", 10));
    }
    if want("startup") {
        let rig = Rig::start();
        startup(
            &rt,
            &rig,
            env("STARTUP_RUNS", 5).max(1),
            env("HISTORY_H", 24),
        );
    }
}
