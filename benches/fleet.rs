//! A fleet on one broker (issue 14, item 4): `GATEWAYS` real `amr-gateway run` processes (the
//! release binary), each with its own id (`gw0001`...), data directory, configuration and a
//! small simulated Modbus TCP bus, publishing to one real mosquitto; `CONSUMERS` headend
//! consumers in this process share the load through one MQTT shared subscription group
//! (`$share/headend/amr/+/reading/#` and the other sequenced kinds), QoS 1, persistent
//! sessions.
//!
//! The consumers record every (gateway, `seq`) they receive into one shared ledger (a gateway's
//! messages go to different consumers, so the gap check must be done on shared state); a
//! `seq` that comes twice is counted as a duplicate. A plain (not shared) subscriber reads the
//! retained `amr/+/status`, which shared subscriptions do not deliver at subscribe time.
//!
//! Over `MEASURE_S` seconds after `WARMUP_S` of warm-up (counted from the moment every gateway
//! is online) it measures the messages per second arriving at the consumers, the end-to-end
//! latency of readings (the reading's `ts` to its arrival), the resident memory of each
//! gateway (`/proc/PID/status`, sampled, mean and max) and the CPU of the gateways, mosquitto,
//! the simulators and the consumers. Then the broker is stopped for `OUTAGE_S` and started
//! again: how long until every gateway has reconnected and the backlogs have reached the
//! consumers (the rate back to the live one), at what rate; holes left in a gateway's `seq`
//! (messages the broker acknowledged before any consumer had subscribed again) are repaired
//! with signed `recall` commands (`amr-gateway command`; every gateway's `[[command_key]]`
//! allows the bench's key to recall). It then stops every gateway with SIGTERM, opens each
//! one's store and checks that every `seq` up to its last one arrived (or is still kept in its
//! outbox: not lost).
//!
//! Run with `CARGO_PROFILE_RELEASE_LTO=off cargo bench --bench fleet`. Environment:
//! `GATEWAYS` (300), `METERS` per gateway (4), `POLL_S` (5), `CONSUMERS` (4), `SIMULATORS`
//! (simulator processes serving the buses, 4), `HEALTH_S` (`[health] interval_s`, 60),
//! `WARMUP_S` (30), `MEASURE_S` (60), `OUTAGE_S` (60; 0: none), `START_MS` (pause between two
//! gateway starts, 20), `RECONNECT_MAX_S` (the gateways' `[mqtt] reconnect_max_s`; default
//! theirs, 60), `GATEWAY_LOG` (their `AMR_LOG`, default `warn`).
//! Results go in docs/benchmarks.md (k).

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_amr-gateway");
const PREFIX: &str = "amr";
const GROUP: &str = "headend";
/// The sequenced kinds' topic filters under `{prefix}/{gateway}/` (README, topics).
const SEQUENCED: &[&str] = &[
    "reading/#",
    "loss/#",
    "alarm/#",
    "voltage/#",
    "freeze/#",
    "curve/#",
    "collection",
    "command/result",
];

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn wait_for_listener(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (SIGKILL) and reaped on drop, unless it has already ended.
struct Proc {
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// utime + stime of a process, in seconds (`/proc/PID/stat`).
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// A field of `/proc/PID/status` (`VmRSS`, `Threads`), its first number.
fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// This process's user + system CPU, seconds (the consumers run here).
fn self_cpu_s() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(ru.ru_utime) + s(ru.ru_stime)
}

/// Raises the soft open-files limit to the hard one (inherited by mosquitto and every
/// child); returns it.
fn raise_nofile() -> u64 {
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit / setrlimit on a struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur as u64
}

/// The headend's broker: mosquitto 2 with the limits raised as a fleet needs them.
fn start_mosquitto(dir: &Path, port: u16) -> Proc {
    use std::os::unix::fs::PermissionsExt;
    // Started as root, mosquitto drops to its own user, which must be able to save here.
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let conf = format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         # No limit on connections (the default, written out).\n\
         max_connections -1\n\
         # QoS 1 messages in flight to one client at a time, and queued for it beyond those\n\
         # (a consumer that is away or slow): a headend holds a backlog, not 100 / 1000.\n\
         max_inflight_messages 1000\n\
         max_queued_messages 1000000\n\
         max_queued_bytes 0\n\
         # Persistent sessions (clean_session false) and their queues survive a restart.\n\
         persistence true\n\
         persistence_location {}/\n\
         autosave_interval 60\n\
         persistent_client_expiration 7d\n\
         set_tcp_nodelay true\n\
         log_dest file {}/mosquitto.log\n\
         log_type error\n\
         log_type warning\n",
        dir.display(),
        dir.display()
    );
    let path = dir.join("mosquitto.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start mosquitto (apt-get install mosquitto)");
    wait_for_listener(port);
    Proc { child }
}

/// One simulator process serving the buses of `gateways`; returns it and each bus's address.
fn start_simulator(
    dir: &Path,
    index: usize,
    gateways: &[String],
    meters: u64,
) -> (Proc, HashMap<String, String>) {
    let mut text = String::new();
    for (g, gw) in gateways.iter().enumerate() {
        writeln!(
            text,
            "[[bus]]\nname = \"{gw}\"\nprotocol = \"modbus-tcp\"\nlisten = \"127.0.0.1:0\"\n\
             turnaround_ms = 5\n"
        )
        .unwrap();
        for unit in 1..=meters {
            writeln!(
                text,
                "[[meter]]\nbus = \"{gw}\"\nunit = {unit}\nmodel = \"eastron-sdm120\"\n\
                 profile = \"random-walk\"\nseed = {}\nload_kw = {:.1}\n\
                 energy_start_kwh = {}\n",
                g as u64 * meters + unit,
                0.5 + unit as f64 * 0.7,
                1000 + unit * 37
            )
            .unwrap();
        }
    }
    let path = dir.join(format!("sim-{index}.toml"));
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(BINARY)
        .args(["simulate", "--config"])
        .arg(&path)
        .env("AMR_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join(format!("sim-{index}.log"))).unwrap())
        .spawn()
        .expect("start amr-gateway simulate");
    // One line per bus: "gw0001: modbus-tcp 127.0.0.1:PORT, units 1,2,3,4".
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addresses = HashMap::new();
    while addresses.len() < gateways.len() {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("simulator {index} ended; see {}", dir.display()))
            .unwrap();
        if let Some((bus, rest)) = line.split_once(": modbus-tcp ") {
            let address = rest.split(',').next().unwrap().trim().to_string();
            addresses.insert(bus.to_string(), address);
        }
    }
    // Keep reading (SIGHUP reports), so the pipe never fills.
    std::thread::spawn(move || for _ in lines {});
    let proc = Proc { child };
    (proc, addresses)
}

/// What every gateway of the fleet has alike.
#[derive(Clone, Copy)]
struct GatewayShape {
    meters: u64,
    poll_s: u64,
    health_s: u64,
    reconnect_max_s: Option<u64>,
}

fn write_gateway_config(
    dir: &Path,
    gw: &str,
    port: u16,
    address: &str,
    shape: GatewayShape,
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let GatewayShape {
        meters,
        poll_s,
        health_s,
        reconnect_max_s,
    } = shape;
    let reconnect = reconnect_max_s.map_or(String::new(), |s| format!("reconnect_max_s = {s}\n"));
    let mut text = format!(
        "[gateway]\nid = \"{gw}\"\ndata_dir = \"data\"\nlog_level = \"warn\"\n\
         timezone = \"Asia/Shanghai\"\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\ntopic_prefix = \"{PREFIX}\"\n{reconnect}\n\
         [health]\ninterval_s = {health_s}\n\n\
         [[bus]]\nname = \"tcp\"\nprotocol = \"modbus-tcp\"\naddress = \"{address}\"\n\
         poll_interval_s = {poll_s}\n"
    );
    for unit in 1..=meters {
        writeln!(
            text,
            "\n[[meter]]\nid = \"m{unit}\"\nbus = \"tcp\"\nunit = {unit}\nmodel = \"eastron-sdm120\""
        )
        .unwrap();
    }
    // The headend's key, allowed to recall (the repair of a gap).
    writeln!(
        text,
        "\n[[command_key]]\nid = \"headend\"\npublic_key_file = \"{}\"\nallow = [\"recall\"]",
        dir.parent().unwrap().join("headend.key.pub").display()
    )
    .unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// What the consumers saw of one gateway.
#[derive(Default)]
struct GatewayLedger {
    seqs: BTreeSet<u64>,
    duplicates: u64,
    /// Bit k: consumer k received at least one of its messages.
    consumers: u64,
}

/// The consumers' shared state: the gap check needs every consumer's messages.
#[derive(Default)]
struct Ledger {
    gateways: HashMap<String, GatewayLedger>,
    /// Sequenced messages received per consumer.
    per_consumer: BTreeMap<usize, u64>,
    /// Messages without `seq` that came through the shared filters (retained state kinds).
    unsequenced: u64,
    /// Reading latencies (ms, arrival − `ts`) while measuring.
    latencies: Vec<i64>,
}

struct Shared {
    ledger: Mutex<Ledger>,
    /// Sequenced messages received by all consumers (duplicates included).
    received: AtomicU64,
    measuring: AtomicBool,
    /// Gateways whose retained status says online (the plain subscriber).
    online: Mutex<BTreeSet<String>>,
}

fn record(shared: &Shared, consumer: usize, topic: &str, payload: &[u8]) {
    let gw = topic.split('/').nth(1).unwrap_or("").to_string();
    let json: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    let mut ledger = shared.ledger.lock().unwrap();
    let Some(seq) = json.get("seq").and_then(|s| s.as_u64()) else {
        ledger.unsequenced += 1;
        return;
    };
    shared.received.fetch_add(1, Ordering::Relaxed);
    *ledger.per_consumer.entry(consumer).or_default() += 1;
    let reading_ts = topic
        .contains("/reading/")
        .then(|| {
            json["ts"]
                .as_str()
                .and_then(amr_gateway::clock::parse_rfc3339)
        })
        .flatten();
    if let Some(ts) = reading_ts.filter(|_| shared.measuring.load(Ordering::Relaxed)) {
        ledger.latencies.push(amr_gateway::clock::now_ms() - ts);
    }
    let g = ledger.gateways.entry(gw).or_default();
    g.consumers |= 1 << (consumer % 64);
    if !g.seqs.insert(seq) {
        g.duplicates += 1;
    }
}

/// A headend consumer: a persistent session (fixed client id, clean_session false) in the
/// shared group, QoS 1, reconnecting by itself. Returns once its subscription is acknowledged.
async fn start_consumer(port: u16, k: usize, shared: Arc<Shared>) {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut options = MqttOptions::new(format!("headend-{k}"), "127.0.0.1", port);
    options
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1024 * 1024, 1024 * 1024);
    let filters: Vec<rumqttc::SubscribeFilter> = SEQUENCED
        .iter()
        .map(|kind| {
            rumqttc::SubscribeFilter::new(
                format!("$share/{GROUP}/{PREFIX}/+/{kind}"),
                QoS::AtLeastOnce,
            )
        })
        .collect();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            let (client, mut eventloop) = AsyncClient::new(options.clone(), 1024);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        // Subscribed again on every connection, even when the broker says it
                        // has the session: mosquitto 2.0.11 restores a persistent session's
                        // plain subscriptions after a restart but not its shared ones
                        // (docs/scale.md). Subscribing again to the same filter is harmless.
                        let _ = client.try_subscribe_many(filters.clone());
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        record(&shared, k, &p.topic, &p.payload)
                    }
                    Ok(_) => {}
                    // The broker is away (the outage): connect again.
                    Err(_) => break,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    ready_rx.await.unwrap();
}

/// A plain subscriber to `{prefix}/+/status`: retained state is read this way, never through
/// a shared subscription.
async fn start_status_reader(port: u16, shared: Arc<Shared>) {
    let mut options = MqttOptions::new("headend-status", "127.0.0.1", port);
    options
        .set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    // A clean session: subscribe again on every connection.
                    let _ = client.try_subscribe(format!("{PREFIX}/+/status"), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let gw = p.topic.split('/').nth(1).unwrap_or("").to_string();
                    let json: serde_json::Value =
                        serde_json::from_slice(&p.payload).unwrap_or_default();
                    let mut online = shared.online.lock().unwrap();
                    if json["state"] == "online" {
                        online.insert(gw);
                    } else {
                        online.remove(&gw);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    });
}

/// The seqs of `1..=last` not in `seqs`, as ranges.
fn gaps(seqs: Option<&BTreeSet<u64>>, last: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut expect = 1;
    for &seq in seqs.into_iter().flatten().take_while(|s| **s <= last) {
        if seq > expect {
            out.push((expect, seq - 1));
        }
        expect = seq + 1;
    }
    if expect <= last {
        out.push((expect, last));
    }
    out
}

/// Repairs the holes below each gateway's highest seq received with signed `recall` commands
/// (`amr-gateway command`, one process per hole, all at once), as a headend would; waits until
/// they are filled. Returns the report's row.
fn recall_holes(root: &Path, port: u16, ids: &[String], shared: &Shared) -> String {
    let holes: Vec<(String, u64, u64)> = {
        let l = shared.ledger.lock().unwrap();
        ids.iter()
            .flat_map(|gw| {
                let seqs = l.gateways.get(gw).map(|g| &g.seqs);
                let last = seqs.and_then(|s| s.last().copied()).unwrap_or(0);
                gaps(seqs, last)
                    .into_iter()
                    .map(move |(a, b)| (gw.clone(), a, b))
            })
            .collect()
    };
    if holes.is_empty() {
        return "    | ... holes left by the restart | none |".into();
    }
    let lost: u64 = holes.iter().map(|(_, a, b)| b - a + 1).sum();
    let gateways: BTreeSet<&String> = holes.iter().map(|(gw, _, _)| gw).collect();
    let started = Instant::now();
    let mut commands: Vec<Child> = holes
        .iter()
        .map(|(gw, a, b)| {
            Command::new(BINARY)
                .args([
                    "command",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                ])
                .args(["--gateway", gw, "--key-id", "headend", "--timeout-s", "120"])
                .arg("--key")
                .arg(root.join("headend.key"))
                .args(["recall", "--arg", &format!("from_seq={a}")])
                .args(["--arg", &format!("to_seq={b}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("amr-gateway command")
        })
        .collect();
    let failed = commands
        .iter_mut()
        .map(|c| c.wait().is_ok_and(|s| s.success()))
        .filter(|ok| !ok)
        .count();
    let deadline = Instant::now() + Duration::from_secs(60);
    let filled = loop {
        let open = {
            let l = shared.ledger.lock().unwrap();
            holes
                .iter()
                .filter(|(gw, a, b)| {
                    let g = l.gateways.get(gw);
                    (*a..=*b).any(|seq| !g.is_some_and(|g| g.seqs.contains(&seq)))
                })
                .count()
        };
        if open == 0 || Instant::now() > deadline {
            break open == 0;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    format!(
        "    | ... holes left by the restart (acknowledged by the broker before any consumer had subscribed again) | {lost} messages of {} gateways in {} ranges; `recall` for each: {failed} commands failed, {} after {:.1} s |",
        gateways.len(),
        holes.len(),
        if filled {
            "all filled"
        } else {
            "NOT all filled"
        },
        started.elapsed().as_secs_f64()
    )
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let n = env("GATEWAYS", 300) as usize;
    let meters = env("METERS", 4);
    let poll_s = env("POLL_S", 5);
    let consumers = env("CONSUMERS", 4) as usize;
    let sims = (env("SIMULATORS", 4) as usize).clamp(1, n);
    let health_s = env("HEALTH_S", 60);
    let warmup = Duration::from_secs(env("WARMUP_S", 30));
    let measure = Duration::from_secs(env("MEASURE_S", 60));
    let start_gap = Duration::from_millis(env("START_MS", 20));
    let shape = GatewayShape {
        meters,
        poll_s,
        health_s,
        reconnect_max_s: std::env::var("RECONNECT_MAX_S")
            .ok()
            .and_then(|v| v.parse().ok()),
    };
    let nofile = raise_nofile();
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let root = dir.path();
    println!(
        "(k) a fleet on one broker: {n} gateways x {meters} eastron-sdm120 over Modbus TCP, \
         poll every {poll_s} s, health every {health_s} s; {consumers} consumers in \
         $share/{GROUP}; {sims} simulator processes; open files limit {nofile}; \
         reconnect_max_s {}; in {}",
        shape
            .reconnect_max_s
            .map_or("default".to_string(), |s| s.to_string()),
        root.display()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let port = free_port();
    let mut broker = start_mosquitto(&root.join("broker"), port);
    let shared = Arc::new(Shared {
        ledger: Mutex::new(Ledger::default()),
        received: AtomicU64::new(0),
        measuring: AtomicBool::new(false),
        online: Mutex::new(BTreeSet::new()),
    });
    rt.block_on(async {
        for k in 0..consumers {
            start_consumer(port, k, shared.clone()).await;
        }
        start_status_reader(port, shared.clone()).await;
    });

    // The simulated buses, one per gateway, spread over `sims` processes.
    let ids: Vec<String> = (1..=n).map(|i| format!("gw{i:04}")).collect();
    let mut simulators = Vec::new();
    let mut addresses = HashMap::new();
    let per_sim = n.div_ceil(sims);
    for (s, chunk) in ids.chunks(per_sim).enumerate() {
        let (proc, found) = start_simulator(root, s, chunk, meters);
        simulators.push(proc);
        addresses.extend(found);
    }

    // The headend's command key; the gateways get its public half.
    let keygen = Command::new(BINARY)
        .args(["keygen", "--out"])
        .arg(root.join("headend.key"))
        .stdout(Stdio::null())
        .status()
        .expect("amr-gateway keygen");
    assert!(keygen.success(), "amr-gateway keygen failed");

    // The gateways.
    let started = Instant::now();
    let mut gateways: Vec<(String, PathBuf, Proc)> = Vec::new();
    for gw in &ids {
        let gdir = root.join(gw);
        let config = write_gateway_config(&gdir, gw, port, &addresses[gw], shape);
        let child = Command::new(BINARY)
            .args(["run", "--config"])
            .arg(&config)
            // GATEWAY_LOG (a tracing filter, e.g. info) overrides the files' `warn`.
            .env(
                "AMR_LOG",
                std::env::var("GATEWAY_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(gdir.join("gateway.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start gateway {gw}: {e}"));
        gateways.push((gw.clone(), config, Proc { child }));
        std::thread::sleep(start_gap);
    }
    let spawned = started.elapsed();
    let deadline =
        Instant::now() + Duration::from_secs(120) + Duration::from_millis(500) * n as u32;
    loop {
        let online = shared.online.lock().unwrap().len();
        if online == n {
            break;
        }
        for (gw, config, p) in &mut gateways {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!(
                    "gateway {gw} exited ({status}):\n{}",
                    log_tail(&config.parent().unwrap().join("gateway.log"), 20)
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "only {online} of {n} gateways online"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "    started {n} gateways in {:.1} s, all online (retained status) after {:.1} s",
        spawned.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    // Warm-up, then the measurement.
    std::thread::sleep(warmup);
    let pids = |ps: &[&Proc]| ps.iter().map(|p| p.pid()).collect::<Vec<_>>();
    let gw_pids = pids(&gateways.iter().map(|g| &g.2).collect::<Vec<_>>());
    let sim_pids = pids(&simulators.iter().collect::<Vec<_>>());
    let cpu_of = |ps: &[u32]| ps.iter().map(|p| cpu_s(*p)).sum::<f64>();
    let (gw_cpu0, broker_cpu0, sim_cpu0, self_cpu0) = (
        cpu_of(&gw_pids),
        cpu_s(broker.pid()),
        cpu_of(&sim_pids),
        self_cpu_s(),
    );
    let received0 = shared.received.load(Ordering::Relaxed);
    shared.measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let mut rss_samples: Vec<u64> = Vec::new();
    let mut rss_max = 0u64;
    let mut threads = 0u64;
    while t0.elapsed() < measure {
        for pid in &gw_pids {
            let kb = status_field(*pid, "VmRSS");
            rss_samples.push(kb);
            rss_max = rss_max.max(kb);
        }
        threads = gw_pids.iter().map(|p| status_field(*p, "Threads")).sum();
        std::thread::sleep(Duration::from_secs(10).min(measure.saturating_sub(t0.elapsed())));
    }
    let secs = t0.elapsed().as_secs_f64();
    shared.measuring.store(false, Ordering::Relaxed);
    let received = shared.received.load(Ordering::Relaxed) - received0;
    let gw_cpu = cpu_of(&gw_pids) - gw_cpu0;
    let broker_cpu = cpu_s(broker.pid()) - broker_cpu0;
    let sim_cpu = cpu_of(&sim_pids) - sim_cpu0;
    let self_cpu = self_cpu_s() - self_cpu0;
    let broker_rss = status_field(broker.pid(), "VmRSS");
    let rss_mean = rss_samples.iter().sum::<u64>() as f64 / rss_samples.len().max(1) as f64;
    let mut latencies = std::mem::take(&mut shared.ledger.lock().unwrap().latencies);
    latencies.sort_unstable();
    let expected = (n as u64 * meters) as f64 / poll_s as f64;

    // A broker outage: mosquitto stopped (SIGTERM: it saves the consumers' sessions) for
    // OUTAGE_S, then started again; the gateways keep their readings and drain them.
    let outage = Duration::from_secs(env("OUTAGE_S", 60));
    let mut drain_rows = Vec::new();
    if !outage.is_zero() {
        broker.signal(libc::SIGTERM);
        let _ = broker.child.wait();
        std::thread::sleep(outage);
        let before: HashMap<String, usize> = {
            let l = shared.ledger.lock().unwrap();
            ids.iter()
                .map(|gw| (gw.clone(), l.gateways.get(gw).map_or(0, |g| g.seqs.len())))
                .collect()
        };
        let received_before = shared.received.load(Ordering::Relaxed);
        let gw_cpu_before = cpu_of(&gw_pids);
        broker = start_mosquitto(&root.join("broker"), port);
        let back = Instant::now();
        let (mut peak, mut last_count, mut last_t) = (0f64, received_before, back);
        let (mut reconnected, mut drain_rss_max) = (None, 0u64);
        // The rate over the last second, measured wholly after every gateway was back.
        let mut settled_rate: Option<f64> = None;
        // When the holes below each gateway's highest seq last changed.
        let (mut last_holes, mut last_change) = (u64::MAX, Duration::ZERO);
        let deadline = back + Duration::from_secs(600);
        // Drained: every gateway back, the rate down to the live one (1.5 x the readings due)
        // and no hole filled for 2 s. Holes left then will not fill by themselves (messages the
        // broker acknowledged and dropped): the recall below repairs them.
        let drained = loop {
            std::thread::sleep(Duration::from_millis(250));
            if last_t.elapsed() >= Duration::from_secs(1) {
                let c = shared.received.load(Ordering::Relaxed);
                let rate = (c - last_count) as f64 / last_t.elapsed().as_secs_f64();
                peak = peak.max(rate);
                settled_rate = reconnected
                    .is_some_and(|r| back + r <= last_t)
                    .then_some(rate);
                (last_count, last_t) = (c, Instant::now());
                for pid in &gw_pids {
                    drain_rss_max = drain_rss_max.max(status_field(*pid, "VmRSS"));
                }
            }
            let received_now = shared.received.load(Ordering::Relaxed);
            let l = shared.ledger.lock().unwrap();
            let got = |gw: &String| l.gateways.get(gw);
            if reconnected.is_none()
                && ids
                    .iter()
                    .all(|gw| got(gw).is_some_and(|g| g.seqs.len() > before[gw]))
            {
                reconnected = Some(back.elapsed());
            }
            let holes: u64 = ids
                .iter()
                .filter_map(got)
                .map(|g| g.seqs.last().copied().unwrap_or(0) - g.seqs.len() as u64)
                .sum();
            if holes != last_holes {
                (last_holes, last_change) = (holes, back.elapsed());
            }
            if settled_rate.is_some_and(|r| r <= 1.5 * expected)
                && back.elapsed() >= last_change + Duration::from_secs(2)
            {
                break Some((back.elapsed(), received_now));
            }
            if Instant::now() > deadline {
                break None;
            }
        };
        let (took, msgs) =
            drained.unwrap_or((back.elapsed(), shared.received.load(Ordering::Relaxed)));
        let (took, msgs) = (took.as_secs_f64(), msgs - received_before);
        drain_rows.push(format!(
            "    | broker down {} s, then back: every gateway reconnected and sending | {} |",
            outage.as_secs(),
            reconnected.map_or("not all within 600 s".into(), |d| format!(
                "after {:.1} s",
                d.as_secs_f64()
            ))
        ));
        drain_rows.push(format!(
            "    | ... every gateway's backlog at the consumers (but for the holes below) | {} |",
            drained.map_or("not within 600 s".into(), |_| format!(
                "after {took:.1} s: {msgs} messages meanwhile (backlog and live), {:.0} /s mean, {peak:.0} /s peak (1 s)",
                msgs as f64 / took
            ))
        ));
        drain_rows.push(format!(
            "    | ... CPU from the restart to now: gateways / mosquitto; gateway RSS max | {:.1} % / {:.1} % of a core; {:.1} MB |",
            (cpu_of(&gw_pids) - gw_cpu_before) / back.elapsed().as_secs_f64() * 100.0,
            cpu_s(broker.pid()) / back.elapsed().as_secs_f64() * 100.0,
            drain_rss_max as f64 / 1024.0
        ));
        drain_rows.push(recall_holes(root, port, &ids, &shared));
    }

    // Stop every gateway with SIGTERM, all at once, and wait for them.
    let stop = Instant::now();
    for (_, _, p) in &gateways {
        p.signal(libc::SIGTERM);
    }
    let mut bad_exits = Vec::new();
    for (gw, _, p) in &mut gateways {
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.is_some_and(|s| s.success()) {
            bad_exits.push(format!("{gw}: {status:?}"));
        }
    }
    let stopped_in = stop.elapsed();

    // Each gateway's last seq and what its outbox still keeps.
    let mut last: HashMap<String, (u64, BTreeSet<u64>)> = HashMap::new();
    for (gw, config, _) in &gateways {
        let cfg = amr_gateway::config::load(config).unwrap_or_else(|e| panic!("{gw}: {e:?}"));
        let store = amr_gateway::store::Store::open(&cfg.db_path(), &cfg.store)
            .unwrap_or_else(|e| panic!("{gw}: {e}"));
        let kept: BTreeSet<u64> = store
            .pending(0, usize::MAX)
            .unwrap()
            .iter()
            .filter_map(|row| {
                serde_json::from_slice::<serde_json::Value>(&row.payload)
                    .ok()?
                    .get("seq")?
                    .as_u64()
            })
            .collect();
        last.insert(gw.clone(), (store.last_seq().unwrap(), kept));
    }
    // Wait (bounded) until every published seq has reached a consumer.
    // A seq still in the outbox is kept, not lost: it counts as present.
    let missing_of = |ledger: &Ledger| {
        let mut missing: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
        for (gw, (last_seq, kept)) in &last {
            let mut present = kept.clone();
            if let Some(g) = ledger.gateways.get(gw) {
                present.extend(&g.seqs);
            }
            let gw_gaps = gaps(Some(&present), *last_seq);
            if !gw_gaps.is_empty() {
                missing.insert(gw.clone(), gw_gaps);
            }
        }
        missing
    };
    let settle = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let missing = missing_of(&shared.ledger.lock().unwrap());
        if missing.is_empty() || Instant::now() > settle {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let ledger = shared.ledger.lock().unwrap();
    let total_seqs: u64 = last.values().map(|(l, _)| *l).sum();
    let kept_total: usize = last.values().map(|(_, k)| k.len()).sum();
    let duplicates: u64 = ledger.gateways.values().map(|g| g.duplicates).sum();
    let spread = ledger
        .gateways
        .values()
        .filter(|g| g.consumers.count_ones() > 1)
        .count();
    let all_received: u64 = ledger.per_consumer.values().sum();

    println!(
        "    measured over {secs:.0} s after {} s of warm-up:",
        warmup.as_secs()
    );
    println!("    | figure | value |");
    println!("    |---|---|");
    println!(
        "    | sequenced messages at the consumers | {:.1} /s ({received} in {secs:.0} s; readings due: {expected:.1} /s) |",
        received as f64 / secs
    );
    println!(
        "    | reading latency, ts to consumer (p50 / p99 / max) | {} / {} / {} ms ({} readings) |",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0),
        latencies.len()
    );
    println!(
        "    | gateway RSS, mean / max ({} samples) | {:.1} / {:.1} MB |",
        rss_samples.len(),
        rss_mean / 1024.0,
        rss_max as f64 / 1024.0
    );
    println!("    | gateway threads, all {n} | {threads} |");
    println!(
        "    | CPU, all gateways | {:.1} % of a core ({:.3} % each; {:.2} ms per message) |",
        gw_cpu / secs * 100.0,
        gw_cpu / secs * 100.0 / n as f64,
        gw_cpu * 1000.0 / received.max(1) as f64
    );
    println!(
        "    | CPU, mosquitto | {:.1} % of a core ({:.3} ms per message); RSS {:.1} MB |",
        broker_cpu / secs * 100.0,
        broker_cpu * 1000.0 / received.max(1) as f64,
        broker_rss as f64 / 1024.0
    );
    println!(
        "    | CPU, {sims} simulators / the {consumers} consumers (this process) | {:.1} % / {:.1} % of a core |",
        sim_cpu / secs * 100.0,
        self_cpu / secs * 100.0
    );
    let shares: Vec<String> = ledger
        .per_consumer
        .values()
        .map(|c| format!("{:.0} %", *c as f64 * 100.0 / all_received.max(1) as f64))
        .collect();
    println!(
        "    | share of each consumer | {} ; {spread} of {n} gateways' messages went to more than one consumer |",
        shares.join(" / ")
    );
    for row in &drain_rows {
        println!("{row}");
    }
    println!(
        "    | SIGTERM to all {n} gateways stopped | {:.1} s; {} exits not 0 |",
        stopped_in.as_secs_f64(),
        bad_exits.len()
    );
    println!(
        "    | completeness | {} of {n} gateways complete: {total_seqs} seqs, {} received ({duplicates} duplicates), {kept_total} still in outboxes; {} unsequenced |",
        n - missing.len(),
        total_seqs
            - kept_total as u64
            - missing
                .values()
                .flatten()
                .map(|(a, b)| b - a + 1)
                .sum::<u64>(),
        ledger.unsequenced
    );
    for e in bad_exits.iter().take(10) {
        println!("    bad exit: {e}");
    }
    for (gw, gaps) in missing.iter().take(10) {
        println!("    MISSING {gw}: {gaps:?}");
    }
    let failed = !missing.is_empty() || !bad_exits.is_empty();
    drop(ledger);
    rt.shutdown_background();
    drop(gateways);
    drop(simulators);
    drop(broker);
    if failed {
        eprintln!(
            "FAILED: gaps or bad exits; the run's files are kept in {}",
            root.display()
        );
        let _ = dir.keep();
        std::process::exit(1);
    }
}
