//! Shared harness of the integration tests: a real mosquitto on a free loopback port, and a
//! subscriber with a persistent session that collects what it receives.
//!
//! Use it from a test file with `mod support;`. Everything waits generously and polls for
//! readiness (a slow shared 2-core machine is the norm); timeouts are upper bounds for
//! waiting, never assertions about speed.
#![allow(dead_code)] // each test file uses a different part of the harness

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long to wait for a broker to accept connections before giving up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_listener(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(1))
            .is_ok()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listening on 127.0.0.1:{port} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A mosquitto process on 127.0.0.1 with its own config in a tempdir; killed on drop.
///
/// The config lets every outgoing QoS 1 message be in flight at once
/// (`max_inflight_messages 0`): mosquitto then writes a message to its subscribers before it
/// sends the PUBACK to the publisher, so a SIGKILL cannot swallow a message the gateway has
/// already seen acknowledged. With [`Mosquitto::start_persistent`] sessions (subscriptions and
/// queued messages) are also saved every second, so a persistent subscriber is still
/// subscribed after a SIGKILL and a restart, even if the gateway reconnects first.
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    /// `persistence false`: the broker keeps nothing across a restart.
    pub fn start() -> Mosquitto {
        Self::start_with(false)
    }

    /// `persistence true`, saved every second: persistent sessions survive a SIGKILL once saved
    /// (see [`Mosquitto::wait_saved`]).
    pub fn start_persistent() -> Mosquitto {
        Self::start_with(true)
    }

    /// Non-persistent, on a port chosen earlier (e.g. one a gateway already tries to reach).
    pub fn start_on(port: u16) -> Mosquitto {
        Self::start_with_port(false, port)
    }

    fn start_with(persistence: bool) -> Mosquitto {
        Self::start_with_port(persistence, free_port())
    }

    fn start_with_port(persistence: bool, port: u16) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        // Started as root, mosquitto drops to its own user, which must be able to save here.
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777));
        }
        let mut conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\n\
             max_queued_messages 0\nlog_dest stderr\nlog_type error\nlog_type warning\n"
        );
        if persistence {
            conf.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.path().display()
            ));
        } else {
            conf.push_str("persistence false\n");
        }
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("write mosquitto.conf");
        let mut broker = Mosquitto {
            port,
            dir,
            child: None,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start mosquitto (apt-get install mosquitto)");
        self.child = Some(child);
        wait_for_listener(self.port, READY_TIMEOUT);
    }

    /// SIGKILL, no goodbye to anyone; waits until the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process stops answering but its sockets stay open — a half-open link for
    /// everyone connected.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Mosquitto::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }

    /// Starts it again on the same port (killing it first if it still runs).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Waits until the broker has saved its state after `since` (persistent brokers only).
    pub fn wait_saved(&self, since: std::time::SystemTime) {
        let db = self.dir.path().join("mosquitto.db");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let saved = std::fs::metadata(&db)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > since);
            if saved {
                return;
            }
            assert!(Instant::now() < deadline, "mosquitto never saved {db:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

fn mosquitto_binary() -> PathBuf {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .unwrap_or_else(|| PathBuf::from("mosquitto"))
}

/// A received message: topic and payload parsed as JSON (`Value::Null` if it was not JSON).
pub type Received = (String, serde_json::Value);

/// An MQTT subscriber (rumqttc, QoS 1, persistent session) that collects every message on
/// `filter`, reconnecting by itself (every 200 ms) and resubscribing whenever the broker does
/// not have its session. Stops when dropped.
pub struct Subscriber {
    received: Arc<Mutex<Vec<Received>>>,
    subscribed: Arc<Mutex<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Connects to 127.0.0.1:`port` as `client_id` and subscribes to `filter`; returns once
    /// the subscription is acknowledged. Must be called inside a tokio runtime.
    pub async fn start(port: u16, client_id: &str, filter: &str) -> Subscriber {
        let received = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(Mutex::new(false));
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1024 * 1024, 1024 * 1024);
        let filter = filter.to_string();
        let task = tokio::spawn({
            let received = Arc::clone(&received);
            let subscribed = Arc::clone(&subscribed);
            async move {
                loop {
                    // A fresh client per connection, like the gateway: rumqttc's own
                    // reconnects do not back off.
                    let (client, mut eventloop) = AsyncClient::new(options.clone(), 64);
                    loop {
                        match eventloop.poll().await {
                            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                                if !ack.session_present {
                                    let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                                } else {
                                    *subscribed.lock().unwrap() = true;
                                }
                            }
                            Ok(Event::Incoming(Packet::SubAck(_))) => {
                                *subscribed.lock().unwrap() = true;
                            }
                            Ok(Event::Incoming(Packet::Publish(p))) => {
                                let json = serde_json::from_slice(&p.payload)
                                    .unwrap_or(serde_json::Value::Null);
                                received.lock().unwrap().push((p.topic.clone(), json));
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        let subscriber = Subscriber {
            received,
            subscribed,
            task,
        };
        let ready = Arc::clone(&subscriber.subscribed);
        subscriber
            .wait_for(READY_TIMEOUT, move |_| *ready.lock().unwrap())
            .await;
        subscriber
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `done(received)` holds; returns what was received then, or `None` after
    /// `timeout` (an upper bound for a slow machine, not a speed requirement).
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Option<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let received = self.received.lock().unwrap();
                if done(&received) {
                    return Some(received.clone());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_for(&self, timeout: Duration, done: impl Fn(&[Received]) -> bool) {
        assert!(
            self.wait_until(timeout, done).await.is_some(),
            "subscriber not ready after {timeout:?}"
        );
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `seq` of each received message whose topic contains `part`, in arrival order.
pub fn seqs_on(received: &[Received], part: &str) -> Vec<u64> {
    received
        .iter()
        .filter(|(topic, _)| topic.contains(part))
        .filter_map(|(_, json)| json.get("seq").and_then(|s| s.as_u64()))
        .collect()
}

/// `amr-gateway run --config FILE` as a child process, its log (stderr) in `log_name` next to
/// the configuration file. SIGKILLed on drop.
pub struct Gateway {
    child: Child,
}

impl Gateway {
    pub fn start(config: &std::path::Path, log_name: &str) -> Gateway {
        Gateway::start_with(config, log_name, env!("CARGO_BIN_EXE_amr-gateway"), &[])
    }

    /// [`Gateway::start`] with extra environment variables (e.g. `LD_PRELOAD` of libfaketime).
    pub fn start_with(
        config: &std::path::Path,
        log_name: &str,
        program: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(config.parent().unwrap().join(log_name))
            .unwrap();
        let child = Command::new(program)
            .envs(env.iter().copied())
            .args(["run", "--config"])
            .arg(config)
            .env("AMR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start amr-gateway run");
        Gateway { child }
    }

    /// SIGKILL: no goodbye, no last snapshot; waits until the process is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status, if the process has ended by itself.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM and wait for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of every `*.log` file in `dir`, for failure messages.
pub fn log_tail(dir: &std::path::Path, lines: usize) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "log") {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            out += &format!("--- {}\n", e.path().display());
            for l in tail.iter().rev() {
                out += l;
                out += "\n";
            }
        }
    }
    out
}

/// Milliseconds since the epoch of an RFC 3339 string field of `json`; panics if absent.
pub fn ts_field(json: &serde_json::Value, field: &str) -> i64 {
    json[field]
        .as_str()
        .and_then(amr_gateway::clock::parse_rfc3339)
        .unwrap_or_else(|| panic!("no timestamp `{field}` in {json}"))
}

/// Simulators on a runtime of their own (two worker threads), so that what a test does on its
/// own runtime — scanning what it received, parsing JSON — never delays a simulated meter's
/// answer or the instant it samples its registers. Dropping it stops the simulators.
pub struct SimRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl SimRuntime {
    pub fn new() -> SimRuntime {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sim")
            .enable_all()
            .build()
            .expect("simulator runtime");
        SimRuntime {
            runtime: Some(runtime),
        }
    }

    /// Starts a simulator from `text` (a simulator file, relative paths against `dir`).
    pub fn start(
        &self,
        text: &str,
        name: &str,
        dir: &std::path::Path,
    ) -> amr_gateway::sim::SimHandle {
        let config = amr_gateway::sim::SimConfig::parse(text, name, dir)
            .unwrap_or_else(|e| panic!("simulator {name}: {e}"));
        let library = amr_gateway::meter::ModelLibrary::builtin();
        let _guard = self.runtime.as_ref().unwrap().enter();
        amr_gateway::sim::start(config, &library)
            .unwrap_or_else(|e| panic!("simulator {name}: {e}"))
    }
}

impl Drop for SimRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// One simulated SDM120 at unit 1 on a pty linked at `ttyRS485` (19200 baud), for the tests of
/// the daemon as a process.
pub const ONE_METER_SIM: &str = r#"
[[bus]]
name = "rs485"
link = "ttyRS485"
baud = 19200
turnaround_ms = 5

[[meter]]
bus = "rs485"
unit = 1
model = "eastron-sdm120"
load_kw = 2.5
energy_start_kwh = 1234.5
"#;

/// A gateway configuration in `dir` reading [`ONE_METER_SIM`] every second, with a broker port
/// where nothing listens (an unreachable broker is normal). Returns its path.
pub fn one_meter_gateway_config(dir: &std::path::Path) -> std::path::PathBuf {
    one_meter_gateway_config_on(dir, free_port())
}

/// [`one_meter_gateway_config`] with the broker on `port` (a broker the test runs).
pub fn one_meter_gateway_config_on(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let text = format!(
        r#"
[gateway]
id = "gw1"
data_dir = "data"

[mqtt]
host = "127.0.0.1"
port = {port}

[[bus]]
name = "rs485"
protocol = "modbus-rtu"
device = "ttyRS485"
baud = 19200
timeout_ms = 300
poll_interval_s = 1

[[meter]]
id = "m1"
bus = "rs485"
unit = 1
model = "eastron-sdm120"
"#
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A small seeded pseudo-random generator (xorshift64*) for fault tests: the seed is printed, and
/// `AMR_FAULT_SEED` replays a run.
pub struct FaultRng(u64);

impl FaultRng {
    /// From `AMR_FAULT_SEED` if set, else from the clock; prints the seed either way.
    pub fn from_env(test: &str) -> FaultRng {
        let seed = std::env::var("AMR_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: seed {seed} (replay with AMR_FAULT_SEED={seed})");
        FaultRng(seed | 1)
    }

    /// A second generator, seeded from this one (for another task).
    pub fn fork(&mut self) -> FaultRng {
        FaultRng(self.next() | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi` (`hi > lo`).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// What a subscriber saw of the sequenced messages: for each `seq`, the first message with it,
/// and every `seq` that came again with other content.
pub struct SeqLedger {
    pub first: std::collections::BTreeMap<u64, Received>,
    pub reused: Vec<(u64, Received, Received)>,
    pub duplicates: usize,
}

impl SeqLedger {
    pub fn of(received: &[Received]) -> SeqLedger {
        let mut ledger = SeqLedger {
            first: Default::default(),
            reused: Vec::new(),
            duplicates: 0,
        };
        for (topic, json) in received {
            let Some(seq) = json.get("seq").and_then(|s| s.as_u64()) else {
                continue;
            };
            match ledger.first.get(&seq) {
                None => {
                    ledger.first.insert(seq, (topic.clone(), json.clone()));
                }
                Some(seen) if seen.0 == *topic && seen.1 == *json => ledger.duplicates += 1,
                Some(seen) => {
                    ledger
                        .reused
                        .push((seq, seen.clone(), (topic.clone(), json.clone())))
                }
            }
        }
        ledger
    }

    /// The seqs of `1..=last` not seen, as ranges `(from, to)`.
    pub fn missing(&self, last: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut expect = 1;
        for &seq in self.first.keys().take_while(|s| **s <= last) {
            if seq > expect {
                gaps.push((expect, seq - 1));
            }
            expect = seq + 1;
        }
        if expect <= last {
            gaps.push((expect, last));
        }
        gaps
    }

    pub fn max(&self) -> u64 {
        self.first.keys().next_back().copied().unwrap_or(0)
    }
}

/// The store after a run, opened once the gateway has stopped: its integrity check, its `seq`
/// counter and the `seq` of every message still in the outbox (kept, so not lost).
pub fn store_after(db: &std::path::Path) -> (String, u64, std::collections::BTreeSet<u64>) {
    let cfg = amr_gateway::config::StoreConfig {
        history_days: 35,
        max_size_mb: 1024,
        commit_window_ms: 0,
    };
    let store = amr_gateway::store::Store::open(db, &cfg).expect("the store opens");
    let integrity = store.integrity_check().expect("integrity_check runs");
    let last = store.last_seq().expect("the seq counter");
    let pending = store
        .pending(0, usize::MAX)
        .expect("the outbox")
        .iter()
        .filter_map(|row| {
            serde_json::from_slice::<serde_json::Value>(&row.payload)
                .ok()
                .and_then(|v| v["seq"].as_u64())
        })
        .collect();
    (integrity, last, pending)
}
