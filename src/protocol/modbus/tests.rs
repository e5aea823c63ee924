//! Transport guarantees, each proven against the simulator's faults on a real pseudo-terminal
//! (RTU) and on real loopback TCP (Modbus TCP, RTU over TCP):
//! deadline, no stale reply after a timeout, prompt rejection of a bad CRC or a wrong unit id,
//! garbage before a reply, exceptions, pending input discarded, reconnect with backoff.

use super::codec;
use super::transport::{RECONNECT_BACKOFF_START, TcpTransport};
use super::{ModbusClient, ModbusError, RtuTiming};
use crate::sim::Fault;
use crate::sim::fixtures::{self, TestSim};
use std::time::{Duration, Instant};

/// The gateway deadline of every test bus (`gateway_timeout_ms`), so late replies are late.
const DEADLINE: Duration = Duration::from_millis(300);
/// Upper bound on one test step: a hang fails the test instead of blocking the run.
const STEP: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    RtuPty,
    RtuOverTcp,
    Tcp,
}

const ALL: [Kind; 3] = [Kind::RtuPty, Kind::RtuOverTcp, Kind::Tcp];
const RTU: [Kind; 2] = [Kind::RtuPty, Kind::RtuOverTcp];

const METERS: &str = r#"
[[meter]]
bus = "b"
unit = 1
model = "test-3ph"
voltage_v = 220.0
load_kw = 3.0
energy_start_kwh = 1000.0
[[meter]]
bus = "b"
unit = 2
model = "test-3ph"
voltage_v = 240.0
load_kw = 6.0
energy_start_kwh = 2000.0
"#;

fn bus_section(kind: Kind) -> String {
    let at = match kind {
        Kind::RtuPty => "link = \"ttyB\"".to_string(),
        Kind::RtuOverTcp => {
            "listen = \"127.0.0.1:0\"\nprotocol = \"modbus-rtu-over-tcp\"".to_string()
        }
        Kind::Tcp => "listen = \"127.0.0.1:0\"\nprotocol = \"modbus-tcp\"".to_string(),
    };
    format!(
        "[[bus]]\nname = \"b\"\n{at}\nbaud = 19200\nturnaround_ms = 5\ngateway_timeout_ms = {}\n",
        DEADLINE.as_millis()
    )
}

fn start(kind: Kind) -> TestSim {
    fixtures::start(&format!("{}{METERS}", bus_section(kind)))
}

async fn open(t: &TestSim) -> ModbusClient {
    let link = t.sim.link("b").unwrap();
    ModbusClient::open(&link, DEADLINE)
        .await
        .expect("client opens")
}

/// Reads 80 input registers from 0 of `unit`, bounded by [`STEP`].
async fn read80(
    c: &mut ModbusClient,
    unit: u8,
    timeout: Duration,
) -> Result<Vec<u16>, ModbusError> {
    tokio::time::timeout(STEP, c.read_registers(unit, 4, 0, 80, timeout))
        .await
        .expect("the transport returned within its deadline")
}

fn f32_at(words: &[u16], at: usize) -> f64 {
    f32::from_bits(((words[at] as u32) << 16) | words[at + 1] as u32) as f64
}

fn voltage(words: &[u16]) -> f64 {
    f32_at(words, 0)
}

fn power_kw(words: &[u16]) -> f64 {
    f32_at(words, 52) * 0.001
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_each_meter_its_own_values() {
    for kind in ALL {
        let t = start(kind);
        let mut c = open(&t).await;
        for (unit, volts) in [(1, 220.0), (2, 240.0)] {
            let w = read80(&mut c, unit, DEADLINE).await.unwrap();
            assert_eq!(w.len(), 80);
            assert!((voltage(&w) - volts).abs() < 0.01, "{kind:?} unit {unit}");
            let energy = f32_at(&w, 72);
            let now = t.sim.value_now("b", unit, "energy_import_kwh").unwrap();
            assert!((energy - now).abs() < 0.01, "{kind:?}: {energy} vs {now}");
        }
        // Holding register, u32 CDAB in 10 Wh.
        let w = tokio::time::timeout(STEP, c.read_registers(1, 3, 0x0100, 2, DEADLINE))
            .await
            .unwrap()
            .unwrap();
        let kwh = (((w[1] as u32) << 16) | w[0] as u32) as f64 * 0.01;
        assert!((kwh - 1000.0).abs() < 0.05, "{kind:?}: {kwh}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exception_reply_is_reported_as_exception() {
    for kind in ALL {
        let t = start(kind);
        let mut c = open(&t).await;
        let fault = Fault {
            exception: 2,
            ..Fault::default()
        };
        t.sim.set_fault("b", 1, fault).unwrap();
        match read80(&mut c, 1, DEADLINE).await {
            Err(ModbusError::Exception { code: 2 }) => {}
            other => panic!("{kind:?}: {other:?}"),
        }
        // A meter that refuses large blocks: exception 03, or silence.
        let mut fault = Fault {
            max_block: 40,
            ..Fault::default()
        };
        t.sim.set_fault("b", 1, fault.clone()).unwrap();
        match read80(&mut c, 1, DEADLINE).await {
            Err(e @ ModbusError::Exception { code: 3 }) => assert!(e.meter_answered()),
            other => panic!("{kind:?}: {other:?}"),
        }
        let w = tokio::time::timeout(STEP, c.read_registers(1, 4, 0, 40, DEADLINE))
            .await
            .unwrap();
        assert!(w.is_ok(), "{kind:?}: {w:?}");
        fault.block_limit_silent = true;
        t.sim.set_fault("b", 1, fault).unwrap();
        assert!(
            matches!(
                read80(&mut c, 1, DEADLINE).await,
                Err(ModbusError::Timeout(300))
            ),
            "{kind:?}"
        );
        // The other meter was never affected.
        assert!(read80(&mut c, 2, DEADLINE).await.is_ok(), "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transaction_has_a_deadline() {
    for kind in ALL {
        let t = start(kind);
        let mut c = open(&t).await;
        let fault = Fault {
            no_reply: true,
            ..Fault::default()
        };
        t.sim.set_fault("b", 1, fault).unwrap();
        let started = Instant::now();
        match read80(&mut c, 1, DEADLINE).await {
            Err(ModbusError::Timeout(300)) => {}
            other => panic!("{kind:?}: {other:?}"),
        }
        assert!(started.elapsed() >= DEADLINE, "{kind:?}");
        // A unit nobody answers for (silence on a shared bus) times out the same way.
        assert!(matches!(
            read80(&mut c, 77, DEADLINE).await,
            Err(ModbusError::Timeout(_))
        ));
        assert!(read80(&mut c, 2, DEADLINE).await.is_ok(), "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_reply_is_never_taken_for_the_next_answer() {
    for kind in ALL {
        let t = start(kind);
        let mut c = open(&t).await;
        let late = Fault {
            late_reply_ms: 20,
            ..Fault::default()
        };
        // The late meter's reply arrives 20 ms after the gateway's deadline (the timeout plus
        // the wire time; here, inside the drain window after this client's deadline), well
        // before the next request's own reply would.
        t.sim.set_fault("b", 1, late.clone()).unwrap();
        assert!(read80(&mut c, 2, DEADLINE).await.is_ok()); // the first connection is accepted
        let connections = t.sim.connections("b");
        assert!(matches!(
            read80(&mut c, 1, DEADLINE).await,
            Err(ModbusError::Timeout(_))
        ));
        // The next request, to another meter, gets that meter's values.
        let w = read80(&mut c, 2, DEADLINE).await.unwrap();
        assert!((voltage(&w) - 240.0).abs() < 0.01, "{kind:?}");
        assert!((power_kw(&w) - 6.0).abs() < 1e-3, "{kind:?}");
        if kind == Kind::Tcp {
            assert_eq!(
                t.sim.connections("b"),
                connections + 1,
                "the connection is re-opened after a timeout"
            );
        }
        // The same meter, asked again after its late reply: the fresh answer, not the stale
        // one (the load changed in between).
        assert!(matches!(
            read80(&mut c, 1, DEADLINE).await,
            Err(ModbusError::Timeout(_))
        ));
        t.sim.set_fault("b", 1, Fault::default()).unwrap();
        t.sim.set_load("b", 1, 9.0).unwrap();
        let w = read80(&mut c, 1, DEADLINE).await.unwrap();
        assert!(
            (power_kw(&w) - 9.0).abs() < 1e-3,
            "{kind:?}: {}",
            power_kw(&w)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_crc_is_rejected_before_the_deadline() {
    let deadline = Duration::from_secs(2);
    for kind in RTU {
        let t = start(kind);
        let mut c = open(&t).await;
        let fault = Fault {
            bad_crc: true,
            ..Fault::default()
        };
        t.sim.set_fault("b", 1, fault).unwrap();
        let started = Instant::now();
        match read80(&mut c, 1, deadline).await {
            Err(ModbusError::BadCrc) => {}
            other => panic!("{kind:?}: {other:?}"),
        }
        let took = started.elapsed();
        assert!(took < deadline, "{kind:?}: {took:?}");
        println!("{kind:?}: bad CRC rejected after {took:?} (deadline {deadline:?})");
        assert!(read80(&mut c, 2, deadline).await.is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_from_the_wrong_unit_is_rejected_before_the_deadline() {
    let deadline = Duration::from_secs(2);
    for kind in ALL {
        let t = start(kind);
        let mut c = open(&t).await;
        let fault = Fault {
            reply_unit: 9,
            ..Fault::default()
        };
        t.sim.set_fault("b", 1, fault).unwrap();
        let started = Instant::now();
        match read80(&mut c, 1, deadline).await {
            Err(ModbusError::WrongUnit {
                expected: 1,
                got: 9,
            }) => {}
            other => panic!("{kind:?}: {other:?}"),
        }
        let took = started.elapsed();
        assert!(took < deadline, "{kind:?}: {took:?}");
        println!("{kind:?}: wrong unit rejected after {took:?} (deadline {deadline:?})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_before_a_reply_does_not_swallow_it() {
    for kind in RTU {
        let t = start(kind);
        let mut c = open(&t).await;
        for garbage in [1, 7, 40, 200] {
            let fault = Fault {
                garbage_before: garbage,
                ..Fault::default()
            };
            t.sim.set_fault("b", 2, fault).unwrap();
            let w = read80(&mut c, 2, DEADLINE)
                .await
                .unwrap_or_else(|e| panic!("{kind:?}, {garbage} bytes: {e}"));
            assert!((voltage(&w) - 240.0).abs() < 0.01);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_pending_before_a_request_is_discarded() {
    for kind in [Kind::RtuPty, Kind::RtuOverTcp] {
        let t = start(kind);
        let mut c = open(&t).await;
        assert!(read80(&mut c, 2, DEADLINE).await.is_ok());
        // A stray but valid frame for exactly the next request sits in the input.
        t.sim
            .inject("b", &codec::rtu_read_reply(2, 4, &[0xFFFF; 80]));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let w = read80(&mut c, 2, DEADLINE).await.unwrap();
        assert!(
            (voltage(&w) - 240.0).abs() < 0.01,
            "{kind:?}: took the stray frame"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_links_reconnect_after_the_server_closes() {
    for kind in [Kind::Tcp, Kind::RtuOverTcp] {
        let t = start(kind);
        let mut c = open(&t).await;
        assert!(read80(&mut c, 1, DEADLINE).await.is_ok());
        assert_eq!(t.sim.connections("b"), 1);
        t.sim.disconnect_clients("b");
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The close is noticed before sending, and the request goes out on a new connection.
        let w = read80(&mut c, 1, DEADLINE).await;
        assert!(w.is_ok(), "{kind:?}: {w:?}");
        assert_eq!(t.sim.connections("b"), 2, "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_reconnect_backs_off_while_the_endpoint_is_down() {
    // A port nobody listens on (yet).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let address = format!("127.0.0.1:{port}");
    let mut tcp = TcpTransport::new(&address);
    match tcp.read_registers(1, 4, 0, 2, DEADLINE).await {
        Err(ModbusError::NotConnected { retry_in_ms, .. }) => {
            assert_eq!(retry_in_ms, RECONNECT_BACKOFF_START.as_millis() as u64)
        }
        other => panic!("{other:?}"),
    }
    // Within the backoff the client fails fast, without a connect attempt.
    let started = Instant::now();
    match tcp.read_registers(1, 4, 0, 2, DEADLINE).await {
        Err(ModbusError::NotConnected { retry_in_ms, .. }) => {
            assert!(retry_in_ms <= RECONNECT_BACKOFF_START.as_millis() as u64)
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < DEADLINE);
    // The endpoint comes up; after the backoff the client connects.
    let t = fixtures::start(&format!(
        "[[bus]]\nname = \"b\"\nlisten = \"{address}\"\nprotocol = \"modbus-tcp\"\n{METERS}"
    ));
    tokio::time::sleep(RECONNECT_BACKOFF_START + Duration::from_millis(50)).await;
    let w = tcp.read_registers(2, 4, 0, 80, DEADLINE).await.unwrap();
    assert!((voltage(&w) - 240.0).abs() < 0.01);
    assert_eq!(t.sim.connections("b"), 1);
    assert_eq!(tcp.connects(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_refused_before_sending() {
    let t = start(Kind::RtuPty);
    let mut c = open(&t).await;
    for (function, count) in [(6, 1), (3, 0), (3, 126)] {
        assert!(matches!(
            c.read_registers(1, function, 0, count, DEADLINE).await,
            Err(ModbusError::InvalidRequest(_))
        ));
    }
    assert_eq!(t.sim.requests("b"), 0);
}

/// The figure for the report: one poll cycle of 10 meters × one block of 80 registers at 9600
/// 8N1 with a 10 ms turnaround, through the pty, against the wire-time bound.
/// `cargo test --lib cycle_time -- --nocapture` prints it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycle_time_of_ten_meters_at_9600_baud() {
    let mut toml =
        String::from("[[bus]]\nname = \"b\"\nlink = \"ttyB\"\nbaud = 9600\nturnaround_ms = 10\n");
    for unit in 1..=10 {
        toml.push_str(&format!(
            "[[meter]]\nbus = \"b\"\nunit = {unit}\nmodel = \"test-3ph\"\n"
        ));
    }
    let t = fixtures::start(&toml);
    let mut c = open(&t).await;
    let timing = RtuTiming::new(9600, 10);
    let bound = (timing.read_wire_time(80) + Duration::from_millis(10)) * 10;
    let cycles = 3;
    let mut took = Vec::new();
    for _ in 0..cycles {
        let started = Instant::now();
        for unit in 1..=10 {
            read80(&mut c, unit, Duration::from_secs(1)).await.unwrap();
        }
        took.push(started.elapsed());
    }
    let mean = took.iter().sum::<Duration>() / cycles;
    println!(
        "10 meters x 80 registers at 9600 8N1, turnaround 10 ms, pty: cycles {took:?}, \
         mean {mean:?}; wire-time bound {bound:?} ({:.1}% of the bound)",
        100.0 * mean.as_secs_f64() / bound.as_secs_f64()
    );
    // The simulator paces by the wire time, so a cycle cannot beat the bound by more than the
    // trailing t3.5 of each reply (the reply is taken as soon as it validates).
    assert!(
        mean + timing.inter_frame_gap() * 10 >= bound,
        "{mean:?} < {bound:?}"
    );
}

/// The standard's silence before every request, seen from the meter's side of the line: the
/// next request starts no sooner than t3.5 after the last byte of the previous reply (4.0 ms at
/// 9600 8E1), even when the reply was taken the instant it validated. A lower bound on a gap —
/// a slow machine only widens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_keeps_t3_5_of_silence_after_the_line_last_carried_a_byte() {
    use super::transport::RtuTransport;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let timing = RtuTiming::new(9600, 11);
    let (gateway_end, mut meter_end) = tokio::io::duplex(1024);
    let mut transport = RtuTransport::new(gateway_end, timing);
    // The meter: answers each request at once, stamps when a request's first byte arrives and
    // when its own reply's last byte was written.
    let meter = tokio::spawn(async move {
        let mut stamps: Vec<(Instant, Instant)> = Vec::new();
        let mut buf = [0u8; 8];
        for _ in 0..5 {
            meter_end.read_exact(&mut buf[..1]).await.unwrap();
            let first_byte = Instant::now();
            meter_end.read_exact(&mut buf[1..]).await.unwrap();
            let reply = codec::rtu_read_reply(buf[0], buf[1], &[7, 8]);
            meter_end.write_all(&reply).await.unwrap();
            stamps.push((first_byte, Instant::now()));
        }
        stamps
    });
    for _ in 0..5 {
        let words = transport
            .read_registers(1, 4, 0, 2, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(words, [7, 8]);
    }
    let stamps = tokio::time::timeout(STEP, meter).await.unwrap().unwrap();
    let gap = timing.inter_frame_gap();
    assert!(gap >= Duration::from_micros(4000), "{gap:?}");
    for pair in stamps.windows(2) {
        let silence = pair[1].0 - pair[0].1;
        assert!(
            silence >= gap,
            "a request {silence:?} after the previous reply, less than t3.5 = {gap:?}"
        );
    }
}
