//! Transport guarantees, each proven against the simulator's DL/T 645 meters on a real
//! pseudo-terminal (and over loopback TCP, a transparent serial server): values of 2007 and
//! 1997 meters on one bus, a deadline on every transaction, no stale reply after a timeout,
//! prompt rejection of a bad checksum or another address, noise before and `FF` after a reply,
//! abnormal replies in words, pending input discarded, the wildcard address read, the broadcast
//! time sync, and a port that refuses parity reported plainly.

use super::codec::{self, Address, DataId};
use super::{Dlt645Error, Dlt645Transport, Line, MeterTime};
use crate::sim::fixtures::{self, TestSim};
use crate::sim::{BusEndpoint, Fault};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_serial::SerialStream;

/// The gateway deadline of every test bus (`gateway_timeout_ms`), so late replies are late.
const DEADLINE: Duration = Duration::from_millis(500);
/// Upper bound on one test step: a hang fails the test instead of blocking the run.
const STEP: Duration = Duration::from_secs(10);
const BAUD: u32 = 9600;

const A1: &str = "000000000001";
const A2: &str = "202208310002";
const A3: &str = "000000001997";

const METERS: &str = r#"
[[meter]]
bus = "b"
unit = 1
address = "000000000001"
model = "dlt645-2007"
voltage_v = 220.0
load_kw = 3.0
energy_start_kwh = 1000.0
[[meter]]
bus = "b"
unit = 2
address = "202208310002"
model = "dlt645-2007"
voltage_v = 240.0
load_kw = 6.0
energy_start_kwh = 2000.0
[[meter]]
bus = "b"
unit = 3
address = "000000001997"
model = "dlt645-1997"
voltage_v = 230.0
load_kw = 1.5
energy_start_kwh = 300.0
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pty,
    Tcp,
}

fn bus_section(kind: Kind, baud: u32) -> String {
    let at = match kind {
        Kind::Pty => "link = \"ttyD\"",
        Kind::Tcp => "listen = \"127.0.0.1:0\"",
    };
    format!(
        "[[bus]]\nname = \"b\"\n{at}\nprotocol = \"dlt645\"\nbaud = {baud}\nparity = \"even\"\n\
         turnaround_ms = 20\ngateway_timeout_ms = {}\n",
        DEADLINE.as_millis()
    )
}

fn start(kind: Kind) -> TestSim {
    fixtures::start(&format!("{}{METERS}", bus_section(kind, BAUD)))
}

/// The transport on a pty or a TCP connection.
enum Client {
    Pty(Dlt645Transport<SerialStream>),
    Tcp(Dlt645Transport<TcpStream>),
}

impl Client {
    async fn read(
        &mut self,
        address: &str,
        di: &str,
        timeout: Duration,
    ) -> Result<Vec<u8>, Dlt645Error> {
        let a = Address::parse(address).unwrap();
        let di = DataId::parse(di).unwrap();
        let read = async {
            match self {
                Client::Pty(t) => t.read(&a, di, timeout).await,
                Client::Tcp(t) => t.read(&a, di, timeout).await,
            }
        };
        tokio::time::timeout(STEP, read)
            .await
            .expect("the transport returned within its deadline")
    }
}

async fn open(t: &TestSim) -> Client {
    match t.sim.endpoint("b").unwrap() {
        BusEndpoint::Pty { link, .. } => {
            Client::Pty(Dlt645Transport::open_serial(link, Line::pty(BAUD)).expect("pty opens"))
        }
        BusEndpoint::Tcp { address } => Client::Tcp(
            Dlt645Transport::connect(&address.to_string(), Line::even(BAUD), DEADLINE)
                .await
                .expect("connects"),
        ),
    }
}

fn bcd(bytes: &[u8], decimals: u8, signed: bool) -> f64 {
    codec::decode_bcd(bytes, decimals, signed).unwrap()
}

/// Phase A voltage of a 2007 meter (02010100, XXX.X V).
async fn voltage(c: &mut Client, address: &str) -> Result<f64, Dlt645Error> {
    Ok(bcd(&c.read(address, "02010100", DEADLINE).await?, 1, false))
}

/// Total active power of a 2007 meter (02030000, XX.XXXX kW, signed).
async fn power_kw(c: &mut Client, address: &str) -> Result<f64, Dlt645Error> {
    Ok(bcd(&c.read(address, "02030000", DEADLINE).await?, 4, true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_2007_and_1997_meters_on_one_bus() {
    for kind in [Kind::Pty, Kind::Tcp] {
        let t = start(kind);
        let mut c = open(&t).await;
        for (unit, address, volts) in [(1, A1, 220.0), (2, A2, 240.0)] {
            let energy = bcd(
                &c.read(address, "00010000", DEADLINE).await.unwrap(),
                2,
                false,
            );
            let now = t.sim.value_now("b", unit, "energy_import_kwh").unwrap();
            assert!((energy - now).abs() < 0.02, "{kind:?}: {energy} vs {now}");
            // The voltage block: three values of 2 bytes.
            let block = c.read(address, "0201FF00", DEADLINE).await.unwrap();
            assert_eq!(block.len(), 6, "{kind:?}");
            for phase in 0..3 {
                let v = bcd(&block[2 * phase..2 * phase + 2], 1, false);
                let quantity = format!("voltage_l{}_v", phase + 1);
                let want = t.sim.value_now("b", unit, &quantity).unwrap();
                assert!(
                    (v - want).abs() < 0.051,
                    "{kind:?} {address}: {v} vs {want}"
                );
                assert!((v - volts).abs() < 5.0, "{kind:?} {address}: {v}");
            }
            // The energy block: total and tariffs 1..4, which add up to the total.
            let e = c.read(address, "0001FF00", DEADLINE).await.unwrap();
            let values: Vec<f64> = e.chunks(4).map(|b| bcd(b, 2, false)).collect();
            assert_eq!(values.len(), 5);
            let tariffs: f64 = values[1..].iter().sum();
            assert!((tariffs - values[0]).abs() < 0.05, "{kind:?}: {values:?}");
        }
        assert!((power_kw(&mut c, A2).await.unwrap() - 6.0).abs() < 1e-3);
        // The 1997 meter, by its 2-byte identifiers.
        let energy = bcd(&c.read(A3, "9010", DEADLINE).await.unwrap(), 2, false);
        let now = t.sim.value_now("b", 3, "energy_import_kwh").unwrap();
        assert!((energy - now).abs() < 0.02, "{kind:?}: {energy} vs {now}");
        let volts = c.read(A3, "B61F", DEADLINE).await.unwrap();
        assert_eq!(bcd(&volts[..2], 0, false), 230.0);
        // A 1997 meter ignores a 2007 read: silence, not a wrong answer.
        assert!(matches!(
            c.read(A3, "00010000", DEADLINE).await,
            Err(Dlt645Error::Timeout(500))
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transaction_has_a_deadline() {
    let t = start(Kind::Pty);
    let mut c = open(&t).await;
    let fault = Fault {
        no_reply: true,
        ..Fault::default()
    };
    t.sim.set_fault("b", 1, fault).unwrap();
    let started = Instant::now();
    match c.read(A1, "00010000", DEADLINE).await {
        Err(Dlt645Error::Timeout(500)) => {}
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() >= DEADLINE);
    // An address nobody has times out the same way.
    assert!(matches!(
        c.read("999999999998", "00010000", DEADLINE).await,
        Err(Dlt645Error::Timeout(_))
    ));
    assert!(c.read(A2, "00010000", DEADLINE).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_reply_is_never_taken_for_the_next_answer() {
    for kind in [Kind::Pty, Kind::Tcp] {
        let t = start(kind);
        let mut c = open(&t).await;
        let late = Fault {
            late_reply_ms: 20,
            ..Fault::default()
        };
        t.sim.set_fault("b", 1, late).unwrap();
        assert!(matches!(
            c.read(A1, "02030000", DEADLINE).await,
            Err(Dlt645Error::Timeout(_))
        ));
        // The next request, to another meter, gets that meter's values.
        assert!((voltage(&mut c, A2).await.unwrap() - 240.0).abs() < 0.05);
        // The same meter, asked again after its late reply: the fresh answer, not the stale
        // one (the load changed in between).
        assert!(matches!(
            c.read(A1, "02030000", DEADLINE).await,
            Err(Dlt645Error::Timeout(_))
        ));
        t.sim.set_fault("b", 1, Fault::default()).unwrap();
        t.sim.set_load("b", 1, 9.0).unwrap();
        let p = power_kw(&mut c, A1).await.unwrap();
        assert!((p - 9.0).abs() < 1e-3, "{kind:?}: {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_checksum_and_other_address_are_rejected_before_the_deadline() {
    let deadline = Duration::from_secs(2);
    let t = start(Kind::Pty);
    let mut c = open(&t).await;
    let bad = Fault {
        bad_crc: true,
        ..Fault::default()
    };
    t.sim.set_fault("b", 1, bad).unwrap();
    let started = Instant::now();
    match c.read(A1, "00010000", deadline).await {
        Err(Dlt645Error::BadChecksum) => {}
        other => panic!("{other:?}"),
    }
    let took = started.elapsed();
    assert!(took < deadline / 2, "{took:?}");
    println!("bad checksum rejected after {took:?} (deadline {deadline:?})");

    let other = Fault {
        reply_address: "000000000099".into(),
        ..Fault::default()
    };
    t.sim.set_fault("b", 1, other).unwrap();
    let started = Instant::now();
    match c.read(A1, "00010000", deadline).await {
        Err(Dlt645Error::WrongAddress { expected, got }) => {
            assert_eq!(expected.to_string(), A1);
            assert_eq!(got.to_string(), "000000000099");
        }
        other => panic!("{other:?}"),
    }
    let took = started.elapsed();
    assert!(took < deadline / 2, "{took:?}");
    println!("other address rejected after {took:?} (deadline {deadline:?})");
    assert!(c.read(A2, "00010000", deadline).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_before_and_ff_after_a_reply_do_not_swallow_it() {
    let t = start(Kind::Pty);
    let mut c = open(&t).await;
    for (garbage, ff) in [(1, 0), (7, 1), (40, 2), (200, 3), (0, 8)] {
        let fault = Fault {
            garbage_before: garbage,
            trailing_ff: ff,
            ..Fault::default()
        };
        t.sim.set_fault("b", 2, fault).unwrap();
        for _ in 0..2 {
            let v = voltage(&mut c, A2)
                .await
                .unwrap_or_else(|e| panic!("{garbage} bytes before, {ff} FF after: {e}"));
            assert!((v - 240.0).abs() < 0.05);
        }
        // The FF of the last reply are not taken into the next meter's transaction.
        assert!((voltage(&mut c, A1).await.unwrap() - 220.0).abs() < 0.05);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abnormal_replies_are_reported_with_their_meaning() {
    let t = start(Kind::Pty);
    let mut c = open(&t).await;
    let fault = Fault {
        refuse_blocks: true,
        ..Fault::default()
    };
    t.sim.set_fault("b", 1, fault).unwrap();
    match c.read(A1, "0001FF00", DEADLINE).await {
        Err(e) => {
            assert!(e.no_such_data_item() && e.meter_answered(), "{e:?}");
            assert_eq!(e.to_string(), "abnormal reply, ERR 0x02: no such data item");
        }
        Ok(v) => panic!("{v:?}"),
    }
    // Item by item it answers.
    assert!(c.read(A1, "00010100", DEADLINE).await.is_ok());
    // An identifier the model lacks.
    let e = c.read(A2, "04000409", DEADLINE).await.unwrap_err();
    assert!(e.no_such_data_item(), "{e}");
    let fault = Fault {
        exception: codec::ERR_PASSWORD,
        ..Fault::default()
    };
    t.sim.set_fault("b", 3, fault).unwrap();
    let e = c.read(A3, "9010", DEADLINE).await.unwrap_err();
    assert!(!e.no_such_data_item());
    assert_eq!(e.to_string(), "abnormal reply, ERR 0x04: password error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_pending_before_a_request_is_discarded() {
    for kind in [Kind::Pty, Kind::Tcp] {
        let t = start(kind);
        let mut c = open(&t).await;
        assert!(voltage(&mut c, A2).await.is_ok());
        // A stray but valid frame for exactly the next request sits in the input.
        let a2 = Address::parse(A2).unwrap();
        let stray = codec::read_reply(&a2, DataId::V2007(0x0201_0100), &[0x99, 0x99], false);
        t.sim.inject("b", &stray);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let v = voltage(&mut c, A2).await.unwrap();
        assert!(
            (v - 240.0).abs() < 0.05,
            "{kind:?}: took the stray frame ({v})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_address_read_and_broadcast_time_sync() {
    let toml = format!(
        "{}[[meter]]\nbus = \"b\"\naddress = \"{A2}\"\nmodel = \"dlt645-2007\"\n",
        bus_section(Kind::Pty, BAUD)
    );
    let t = fixtures::start(&toml);
    let Client::Pty(mut c) = open(&t).await else {
        unreachable!()
    };
    let found = tokio::time::timeout(STEP, c.read_address(DEADLINE))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.to_string(), A2);
    let requests = t.sim.requests("b");
    let time = MeterTime::from_unix(crate::clock::now_ms() / 1000, 8 * 3600);
    c.broadcast_time(&time, DEADLINE).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(t.sim.requests("b"), requests + 1, "the meter took the sync");
    // The meter's clock (date and time items) reads back.
    let a = Address::parse(A2).unwrap();
    let date = c
        .read(&a, DataId::V2007(0x0400_0101), DEADLINE)
        .await
        .unwrap();
    assert_eq!(
        codec::bcd_digits(&date[1..]).unwrap()[..2]
            .parse::<u16>()
            .unwrap(),
        time.year % 100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pty_refusing_parity_is_reported_plainly() {
    let t = start(Kind::Pty);
    let BusEndpoint::Pty { link, .. } = t.sim.endpoint("b").unwrap() else {
        unreachable!()
    };
    match Dlt645Transport::open_serial(link, Line::even(BAUD)) {
        Err(e @ Dlt645Error::LineSetting { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&link.display().to_string()), "{text}");
            assert!(text.contains("parity even (9600 baud 8E1)"), "{text}");
            assert!(text.contains("Invalid argument"), "{text}");
            println!("{text}");
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("parity on a pty was taken silently"),
    }
    assert!(matches!(
        Dlt645Transport::open_serial(link, Line::pty(115_200)),
        Err(Dlt645Error::InvalidRequest(_))
    ));
}

/// One read at 2400 baud takes at least its wire time plus the meter's response delay (the
/// simulator paces by the bus's baud rate and 11-bit characters), and the default deadline
/// covers it with room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_at_2400_baud_take_their_wire_time() {
    let t = fixtures::start(&format!("{}{METERS}", bus_section(Kind::Pty, 2400)));
    let BusEndpoint::Pty { link, .. } = t.sim.endpoint("b").unwrap() else {
        unreachable!()
    };
    let mut c = Dlt645Transport::open_serial(link, Line::pty(2400)).unwrap();
    let timeout = Line::DEFAULT.default_timeout();
    let a = Address::parse(A1).unwrap();
    let started = Instant::now();
    let value = c
        .read(&a, DataId::V2007(0x0001_FF00), timeout)
        .await
        .unwrap();
    let took = started.elapsed();
    let bound = Line::DEFAULT.read_wire_time(codec::Version::V2007, value.len())
        + Duration::from_millis(20);
    println!("0001FF00 at 2400 8E1: {took:?}, wire time + response delay {bound:?}");
    assert!(took >= bound.mul_f64(0.95), "{took:?} < {bound:?}");
    assert!(took < timeout, "{took:?}");
}

/// What a bus driver does, in a few lines: plan the reads of a model (blocks first), read each,
/// fall back to the single identifiers of a block the meter refuses ("no such data item"),
/// decode, and publish the contract quantities. Every value equals the simulator's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_model_is_read_with_the_block_fallback() {
    use crate::meter::{DiValue, dlt645_model::ValueFormat};
    use std::collections::{BTreeMap, BTreeSet, VecDeque};
    let t = start(Kind::Pty);
    let Client::Pty(mut c) = open(&t).await else {
        unreachable!()
    };
    let library = fixtures::library();
    let fault = Fault {
        refuse_blocks: true,
        ..Fault::default()
    };
    t.sim.set_fault("b", 1, fault).unwrap();
    for (unit, address, model, refuses) in [
        (1, A1, "dlt645-2007", true),
        (2, A2, "dlt645-2007", false),
        (3, A3, "dlt645-1997", false),
    ] {
        let model = library.get_dlt645(model).unwrap();
        let address = Address::parse(address).unwrap();
        let mut refused = BTreeSet::new();
        let mut values = BTreeMap::new();
        let mut reads: VecDeque<_> = model.plan(true, &refused).into();
        let mut requests = 0;
        while let Some(read) = reads.pop_front() {
            requests += 1;
            match c.read(&address, read.di, DEADLINE).await {
                Ok(bytes) => {
                    for (entry, value) in model.decode(&read, &bytes).unwrap() {
                        if let (true, DiValue::Number(v)) = (entry.is_quantity(), value) {
                            values.insert(entry.name.clone(), (v, entry.format));
                        }
                    }
                }
                Err(e) if e.no_such_data_item() && read.is_block() => {
                    refused.insert(read.di);
                    reads.extend(read.fallback());
                }
                Err(e) => panic!("{address} {}: {e}", read.di),
            }
        }
        assert_eq!(refused.len(), if refuses { model.blocks.len() } else { 0 });
        let quantities = model.entries.iter().filter(|e| e.is_quantity()).count();
        assert_eq!(values.len(), quantities, "{address}");
        for (name, (v, format)) in &values {
            let want = t.sim.value_now("b", unit, name).unwrap();
            let ValueFormat::Bcd { decimals, .. } = format else {
                unreachable!()
            };
            let tolerance = 0.5 * 10f64.powi(-i32::from(*decimals)) + 0.01;
            assert!(
                (v - want).abs() <= tolerance,
                "{address} {name}: read {v}, simulator {want}"
            );
        }
        println!(
            "{address} ({}): {} quantities in {requests} reads{}",
            model.name,
            values.len(),
            if refuses { ", blocks refused" } else { "" }
        );
    }
}
