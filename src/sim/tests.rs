//! Simulator tests: raw frames on a real pty and on loopback TCP, links, run-time changes, and
//! the `simulate` loop with SIGHUP.

use super::fixtures::{self, TestSim};
use super::*;
use crate::protocol::modbus::codec;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STEP: Duration = Duration::from_secs(5);

fn rtu_sim() -> TestSim {
    fixtures::start(
        r#"
        [[bus]]
        name = "bus1"
        link = "dev/ttyBUS1"
        baud = 115200
        turnaround_ms = 2
        [[meter]]
        bus = "bus1"
        unit = 1
        model = "test-3ph"
        [[meter]]
        bus = "bus1"
        unit = 3
        model = "test-3ph"
        export = true
        "#,
    )
}

/// Opens the pty link raw, as the gateway would.
fn open_line(link: &Path) -> tokio_serial::SerialStream {
    use tokio_serial::SerialPortBuilderExt;
    tokio_serial::new(link.to_string_lossy(), 115_200)
        .open_native_async()
        .expect("pty link opens as a serial port")
}

/// Reads whatever arrives within `window`.
async fn collect(stream: &mut (impl AsyncReadExt + Unpin), window: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 512];
    let until = tokio::time::Instant::now() + window;
    while let Ok(Ok(n)) = tokio::time::timeout_at(until, stream.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_answers_only_its_units() {
    let t = rtu_sim();
    let link = t.dir.path().join("dev/ttyBUS1");
    let target = std::fs::read_link(&link).unwrap();
    assert!(target.starts_with("/dev/pts/"), "{target:?}");
    let mut line = open_line(&link);

    line.write_all(&codec::rtu_read_request(1, 4, 0, 2))
        .await
        .unwrap();
    let got = collect(&mut line, Duration::from_millis(200)).await;
    assert!(matches!(
        codec::scan_rtu_reply(&got, 1, 4, 2),
        codec::RtuScan::Reply { .. }
    ));

    // Unit 2 is not on this bus: silence.
    line.write_all(&codec::rtu_read_request(2, 4, 0, 2))
        .await
        .unwrap();
    assert!(
        collect(&mut line, Duration::from_millis(200))
            .await
            .is_empty()
    );

    // A write (function 06) of a register the meter does not have gets exception 02; of a
    // holding register it has, its echo, and the register reads back as written. Coils: 01.
    let mut write = vec![1, 6, 0, 1, 0, 3];
    codec::append_crc(&mut write);
    line.write_all(&write).await.unwrap();
    let got = collect(&mut line, Duration::from_millis(200)).await;
    assert_eq!(got, codec::rtu_exception_reply(1, 6, 2));
    let write = codec::Request::WriteRegister {
        address: 0x0100,
        value: 7,
    };
    line.write_all(&codec::rtu_request(1, &write))
        .await
        .unwrap();
    let got = collect(&mut line, Duration::from_millis(200)).await;
    assert_eq!(got, codec::rtu_request(1, &write));
    line.write_all(&codec::rtu_read_request(1, 3, 0x0100, 1))
        .await
        .unwrap();
    let got = collect(&mut line, Duration::from_millis(200)).await;
    assert_eq!(got, codec::rtu_read_reply(1, 3, &[7]));
    let coil = codec::Request::WriteCoil {
        address: 0,
        on: true,
    };
    line.write_all(&codec::rtu_request(1, &coil)).await.unwrap();
    let got = collect(&mut line, Duration::from_millis(200)).await;
    assert_eq!(got, codec::rtu_exception_reply(1, 5, 1));

    // Too many registers: exception 03.
    line.write_all(&codec::rtu_read_request(3, 3, 0, 126))
        .await
        .unwrap();
    let got = collect(&mut line, Duration::from_millis(200)).await;
    assert_eq!(got, codec::rtu_exception_reply(3, 3, 3));

    // The gateway closes and reopens its end: the line still works.
    drop(line);
    let mut line = open_line(&link);
    line.write_all(&codec::rtu_read_request(3, 4, 74, 2))
        .await
        .unwrap();
    let got = collect(&mut line, Duration::from_millis(200)).await;
    match codec::scan_rtu_reply(&got, 3, 4, 2) {
        codec::RtuScan::Reply { words, .. } => {
            let kwh = f32::from_bits(((words[0] as u32) << 16) | words[1] as u32);
            assert!((0.0..0.01).contains(&kwh), "PV export starts at 0: {kwh}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_are_replaced_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyX");
    std::os::unix::fs::symlink("/nonexistent", &link).unwrap();
    let config = SimConfig::parse(
        "[[bus]]\nname = \"x\"\nlink = \"ttyX\"\n",
        "t.toml",
        dir.path(),
    )
    .unwrap();
    let sim = start(config, &fixtures::library()).unwrap();
    let target = std::fs::read_link(&link).unwrap();
    assert!(target.starts_with("/dev/pts/"));
    let lines = sim.describe();
    assert_eq!(
        lines,
        vec![format!(
            "x: pty {} -> {}, units ",
            link.display(),
            target.display()
        )]
    );
    let clone = sim.clone();
    drop(sim);
    assert!(
        std::fs::symlink_metadata(&link).is_ok(),
        "a clone still runs"
    );
    drop(clone);
    assert!(std::fs::symlink_metadata(&link).is_err(), "link removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_tcp_server_answers_frames() {
    let t = fixtures::start(
        r#"
        [[bus]]
        name = "t"
        listen = "127.0.0.1:0"
        protocol = "modbus-tcp"
        turnaround_ms = 1
        [[meter]]
        bus = "t"
        unit = 5
        model = "test-3ph"
        voltage_v = 231.0
        "#,
    );
    let address = t.sim.tcp_address("t").unwrap();
    let mut s = tokio::net::TcpStream::connect(address).await.unwrap();
    s.write_all(&codec::tcp_read_request(42, 5, 4, 0, 2))
        .await
        .unwrap();
    let got = collect(&mut s, Duration::from_millis(200)).await;
    let (frame, _) = codec::split_tcp_frame(&got).unwrap().unwrap();
    assert_eq!(frame.transaction, 42);
    match codec::parse_read_reply_pdu(&frame.pdu, 4, 2) {
        codec::ReadOutcome::Words(w) => {
            let v = f32::from_bits(((w[0] as u32) << 16) | w[1] as u32);
            assert!((v - 231.0).abs() < 0.01);
        }
        other => panic!("{other:?}"),
    }
    // Another function: exception 01. Another unit: silence.
    let mut req = codec::tcp_read_request(43, 5, 4, 0, 2);
    req[7] = 0x11;
    s.write_all(&req).await.unwrap();
    s.write_all(&codec::tcp_read_request(44, 6, 4, 0, 2))
        .await
        .unwrap();
    let got = collect(&mut s, Duration::from_millis(200)).await;
    assert_eq!(got, codec::tcp_exception_reply(43, 5, 0x11, 1));
    assert_eq!(t.sim.connections("t"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_changes_faults_and_loads() {
    let t = rtu_sim();
    let e0 = t.sim.value_now("bus1", 1, "energy_import_kwh").unwrap();
    t.sim.set_load("bus1", 1, 3600.0).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e1 = t.sim.value_now("bus1", 1, "energy_import_kwh").unwrap();
    // 3600 kW for ~0.1 s = ~0.1 kWh.
    assert!(e1 - e0 > 0.09 && e1 - e0 < 0.5, "{}", e1 - e0);
    assert_eq!(t.sim.value_now("bus1", 3, "power_kw"), Some(-1.0));
    assert_eq!(t.sim.value_now("bus1", 1, "no_such_quantity"), None);
    assert!(matches!(
        t.sim.set_fault("bus1", 9, Fault::default()),
        Err(SimError::NoSuchMeter { unit: 9, .. })
    ));

    let reloaded = SimConfig::parse(
        r#"
        [[bus]]
        name = "bus1"
        link = "dev/ttyBUS1"
        [[meter]]
        bus = "bus1"
        unit = 1
        model = "test-3ph"
        load_kw = 2.0
        [meter.fault]
        exception = 4
        "#,
        "t.toml",
        t.dir.path(),
    )
    .unwrap();
    t.sim.apply(&reloaded).unwrap();
    assert_eq!(t.sim.fault("bus1", 1).unwrap().exception, 4);
    assert_eq!(t.sim.value_now("bus1", 1, "power_kw"), Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_bus_and_conditions_at_run_time() {
    let t = rtu_sim();
    let bus = t.sim.bus_config("bus1").unwrap();
    let mut client = crate::protocol::modbus::ModbusClient::open(
        &bus.modbus_link().unwrap(),
        Duration::from_millis(bus.timeout_ms),
    )
    .await
    .unwrap();
    let timeout = Duration::from_millis(300);
    assert!(client.read_registers(1, 4, 0, 2, timeout).await.is_ok());
    t.sim.set_bus_silent("bus1", true).unwrap();
    assert!(matches!(
        client.read_registers(1, 4, 0, 2, timeout).await,
        Err(crate::protocol::modbus::ModbusError::Timeout { .. })
    ));
    t.sim.set_bus_silent("bus1", false).unwrap();
    assert!(client.read_registers(3, 4, 0, 2, timeout).await.is_ok());
    assert!(matches!(
        t.sim.set_bus_silent("nope", true),
        Err(SimError::NoSuchBus { .. })
    ));

    let mut c = t.sim.conditions("bus1", 1).unwrap();
    c.sag = Some(0.5);
    t.sim.set_conditions("bus1", 1, c.clone()).unwrap();
    assert_eq!(t.sim.value_now("bus1", 1, "voltage_l1_v"), Some(115.0));
    c.sag = Some(3.0);
    let e = t.sim.set_conditions("bus1", 1, c).unwrap_err().to_string();
    assert!(e.starts_with("meter 1 on bus \"bus1\": sag"), "{e}");

    // A reload sets conditions and silences the bus.
    let reloaded = SimConfig::parse(
        "[[bus]]\nname = \"bus1\"\nlink = \"dev/ttyBUS1\"\nsilent = true\n\
         [[meter]]\nbus = \"bus1\"\nunit = 1\nmodel = \"test-3ph\"\nreversed = true\n",
        "t.toml",
        t.dir.path(),
    )
    .unwrap();
    t.sim.apply(&reloaded).unwrap();
    assert_eq!(t.sim.value_now("bus1", 1, "power_kw"), Some(-1.0));
    assert!(client.read_registers(1, 4, 0, 2, timeout).await.is_err());
}

#[test]
fn unknown_model_is_named() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let config = SimConfig::parse(
        "[[bus]]\nname = \"b\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"modbus-tcp\"\n\
         [[meter]]\nbus = \"b\"\nunit = 4\nmodel = \"nope\"\n",
        "t.toml",
        Path::new("."),
    )
    .unwrap();
    let e = start(config, &fixtures::library())
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        e,
        "meter 4 on bus \"b\": unknown model \"nope\"; available: test-3ph"
    );
}

#[test]
fn load_names_the_file_and_resolves_links() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sim.toml");
    std::fs::write(&path, "[[bus]]\nname = \"b\"\nlink = \"ttyB\"\n").unwrap();
    let c = SimConfig::load(&path).unwrap();
    assert_eq!(
        c.buses[0].link.as_deref(),
        Some(dir.path().join("ttyB").as_path())
    );
    let missing = dir.path().join("missing.toml");
    let e = SimConfig::load(&missing).unwrap_err().to_string();
    assert!(e.starts_with(&missing.display().to_string()), "{e}");
}

/// `simulate`: the file's faults are re-applied on SIGHUP, and shutdown removes the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_reloads_faults_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sim.toml");
    let file = |exception: u8| {
        format!(
            "[[bus]]\nname = \"b\"\nlink = \"ttyB\"\nbaud = 115200\nturnaround_ms = 1\n\
             [[meter]]\nbus = \"b\"\nunit = 1\nmodel = \"test-3ph\"\n\
             [meter.fault]\nexception = {exception}\n"
        )
    };
    std::fs::write(&path, file(0)).unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let run_path = path.clone();
    let run =
        tokio::spawn(
            async move { run_with_library(&run_path, &fixtures::library(), shutdown).await },
        );
    let link = dir.path().join("ttyB");
    let wait = tokio::time::Instant::now() + STEP;
    while std::fs::symlink_metadata(&link).is_err() {
        assert!(tokio::time::Instant::now() < wait, "simulate did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The SIGHUP handler is installed right after the link appears.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let bus = crate::config::BusConfig {
        name: "b".into(),
        protocol: crate::config::BusProtocol::ModbusRtu,
        device: Some(link.clone()),
        address: None,
        serial: crate::config::SerialSettings {
            baud: 115_200,
            parity: crate::config::Parity::None,
            data_bits: 8,
            stop_bits: 1,
        },
        timeout_ms: 500,
        poll_interval_s: 60,
        preamble: 4,
        line: 0,
    };
    let mut client = crate::protocol::modbus::ModbusClient::open(
        &bus.modbus_link().unwrap(),
        Duration::from_millis(bus.timeout_ms),
    )
    .await
    .unwrap();
    let timeout = Duration::from_millis(500);
    assert!(client.read_registers(1, 4, 0, 2, timeout).await.is_ok());

    std::fs::write(&path, file(4)).unwrap();
    // SAFETY: signals this process; the simulator's handler is installed.
    unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(matches!(
        client.read_registers(1, 4, 0, 2, timeout).await,
        Err(crate::protocol::modbus::ModbusError::Exception { code: 4 })
    ));

    stop.send(true).unwrap();
    tokio::time::timeout(STEP, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(std::fs::symlink_metadata(&link).is_err(), "link removed");
}

/// The most common field fault, rehearsed: a master at another baud rate than the meters' gets
/// silence (on a real line, garbage no meter answers); at the right one, replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meters_answer_only_at_their_own_baud_rate() {
    use tokio_serial::SerialPortBuilderExt;
    let t = rtu_sim();
    let link = t.dir.path().join("dev/ttyBUS1");
    let request = codec::rtu_read_request(1, 4, 0, 2);
    for (baud, answers) in [(9600, false), (115_200, true), (19_200, false)] {
        let mut line = tokio_serial::new(link.to_string_lossy(), baud)
            .open_native_async()
            .expect("pty link opens as a serial port");
        line.write_all(&request).await.unwrap();
        let got = collect(&mut line, Duration::from_millis(200)).await;
        let replied = matches!(
            codec::scan_rtu_reply(&got, 1, 4, 2),
            codec::RtuScan::Reply { .. }
        );
        assert_eq!(replied, answers, "at {baud} baud: {got:02x?}");
    }
}
