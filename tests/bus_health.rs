//! Meter health under faults, as the meter state message publishes it: CRC errors, timeouts,
//! exceptions, success rate and latency are counted against the right meter; and a register a
//! meter refuses even when read alone is given up after a few polls, the rest of the meter
//! still read.

use amr_gateway::bus::{BusEvent, HealthChange, MeterStatus, OfflinePolicy, run_bus};
use amr_gateway::config::{self, Config};
use amr_gateway::liveness::Heartbeat;
use amr_gateway::meter::ModelLibrary;
use amr_gateway::protocol::modbus::RtuTiming;
use amr_gateway::protocol::modbus::codec;
use amr_gateway::sim::{self, SimConfig};
use amr_gateway::store::MeterState;
use amr_gateway::uplink::contract::{Topics, meter_state_message};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Upper bound for waiting on a slow machine; never an assertion about speed.
const PATIENCE: Duration = Duration::from_secs(60);

fn gateway_config(dir: &Path, bus: &str, meters: &[(u8, &str)]) -> Config {
    let mut text = format!(
        "[gateway]\nid = \"gw\"\ndata_dir = \"{}\"\n[mqtt]\nhost = \"127.0.0.1\"\n{bus}\n",
        dir.join("data").display()
    );
    for (unit, model) in meters {
        text += &format!(
            "[[meter]]\nid = \"m{unit}\"\nbus = \"b1\"\nunit = {unit}\nmodel = \"{model}\"\n"
        );
    }
    config::load_str(&text, &dir.join("gateway.toml")).unwrap()
}

/// Runs bus `b1` of `config` with `policy`, handing every event to `until` until it says stop.
async fn run_bus_until(
    config: &Config,
    policy: OfflinePolicy,
    mut until: impl FnMut(&BusEvent) -> bool,
) {
    let (bus, meters) = config.bus_settings().remove(0);
    let (tx, mut rx) = mpsc::channel(1024);
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_bus(
        bus,
        meters,
        Vec::new(),
        policy,
        tx,
        stop_rx.into(),
        Heartbeat::unwatched(),
    ));
    let done = tokio::time::timeout(PATIENCE, async {
        while let Some(ev) = rx.recv().await {
            if until(&ev) {
                return;
            }
        }
        panic!("bus task ended");
    })
    .await;
    assert!(done.is_ok(), "condition not reached within {PATIENCE:?}");
    stop_tx.send(true).unwrap();
    drop(rx);
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_counted_against_the_right_meter_in_the_state_message() {
    let dir = tempfile::tempdir().unwrap();
    let sim_text = r#"
        [[bus]]
        name = "b1"
        link = "ttyH"
        baud = 9600
        turnaround_ms = 10
        gateway_timeout_ms = 300
        [[meter]]
        bus = "b1"
        unit = 1
        model = "eastron-sdm120"
        [[meter]]
        bus = "b1"
        unit = 2
        model = "eastron-sdm120"
        fault = { bad_crc = true }
        [[meter]]
        bus = "b1"
        unit = 3
        model = "eastron-sdm120"
        fault = { late_reply_ms = 150 }
        [[meter]]
        bus = "b1"
        unit = 4
        model = "eastron-sdm120"
        fault = { exception = 4 }
    "#;
    let sim = sim::start(
        SimConfig::parse(sim_text, "sim.toml", dir.path()).unwrap(),
        &ModelLibrary::builtin(),
    )
    .unwrap();
    let link = sim.bus_config("b1").unwrap().device.unwrap();
    let bus = format!(
        "[[bus]]\nname = \"b1\"\nprotocol = \"modbus-rtu\"\ndevice = \"{}\"\nbaud = 9600\n\
         timeout_ms = 300\npoll_interval_s = 1\n",
        link.display()
    );
    let model = "eastron-sdm120";
    let config = gateway_config(
        dir.path(),
        &bus,
        &[(1, model), (2, model), (3, model), (4, model)],
    );
    let mut last: BTreeMap<String, MeterStatus> = BTreeMap::new();
    run_bus_until(&config, OfflinePolicy::default(), |ev| {
        if let BusEvent::MeterState(s) = ev {
            last.insert(s.meter.clone(), s.clone());
        }
        ["m2", "m3", "m4"].iter().all(|m| {
            last.get(*m)
                .is_some_and(|s| s.change == HealthChange::WentOffline)
        }) && last.contains_key("m1")
    })
    .await;

    let topics = Topics::new("amr", "gw");
    let state = |m: &str| -> Value {
        let model = config.meter(m).map(|c| c.model.as_str());
        let ratios = config.meter(m).map(|c| c.ratios);
        meter_state_message(&topics, &MeterState::of(&last[m], model), ratios)
            .payload
            .into_value()
    };
    let n = |v: &Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));

    let ok = state("m1");
    assert_eq!(ok["state"], "online", "{ok}");
    assert_eq!(n(&ok, "success_rate_pct"), 100.0, "{ok}");
    assert_eq!(
        n(&ok, "crc_errors") + n(&ok, "timeouts") + n(&ok, "exceptions"),
        0.0
    );
    // The latency includes the wire time of the meter's one 80-register read.
    let wire = RtuTiming::new(9600, 10).read_wire_time(80).as_secs_f64() * 1000.0;
    assert!(
        n(&ok, "latency_ms") >= wire.floor(),
        "{ok} vs wire {wire} ms"
    );
    assert_eq!(ok["bus"], "b1");
    assert_eq!(ok["unit"], 1);

    let crc = state("m2");
    assert_eq!(crc["state"], "offline", "{crc}");
    assert!(n(&crc, "crc_errors") >= 3.0, "{crc}");
    assert_eq!(n(&crc, "timeouts"), 0.0, "{crc}");
    assert_eq!(n(&crc, "success_rate_pct"), 0.0, "{crc}");
    assert!(crc["last_error"].as_str().unwrap().contains("CRC"), "{crc}");

    let late = state("m3");
    assert_eq!(late["state"], "offline", "{late}");
    assert!(n(&late, "timeouts") >= 3.0, "{late}");
    assert_eq!(n(&late, "crc_errors"), 0.0, "{late}");
    assert!(
        late["last_error"].as_str().unwrap().contains("no reply"),
        "{late}"
    );

    let exc = state("m4");
    assert_eq!(exc["state"], "offline", "{exc}");
    assert!(n(&exc, "exceptions") >= 3.0, "{exc}");
    assert_eq!(n(&exc, "timeouts") + n(&exc, "crc_errors"), 0.0, "{exc}");
    assert!(
        exc["last_error"].as_str().unwrap().contains("0x04"),
        "{exc}"
    );
}

/// A Modbus TCP meter that answers every read with zeros, except reads touching `refused`
/// (exception 02, as a meter without that register does); counts the reads touching it.
async fn refusing_meter(refused: u16, touching: Arc<AtomicU64>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let touching = touching.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 512];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Ok(Some((frame, used))) = codec::split_tcp_frame(&buf) {
                        buf.drain(..used);
                        let req = codec::parse_read_request_pdu(frame.unit, &frame.pdu).unwrap();
                        let end = req.address as u32 + req.count as u32;
                        let reply = if (req.address as u32) <= refused as u32
                            && end > refused as u32
                        {
                            touching.fetch_add(1, Ordering::Relaxed);
                            codec::tcp_exception_reply(
                                frame.transaction,
                                req.unit,
                                req.function,
                                codec::ILLEGAL_DATA_ADDRESS,
                            )
                        } else {
                            let words = vec![0u16; req.count as usize];
                            codec::tcp_read_reply(frame.transaction, req.unit, req.function, &words)
                        };
                        if stream.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_refused_even_alone_is_given_up_and_the_rest_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let library = ModelLibrary::builtin();
    let model = library.get("eastron-sdm120").unwrap();
    let freq = model
        .registers
        .iter()
        .find(|r| r.quantity == "frequency_hz")
        .unwrap()
        .address;
    let touching = Arc::new(AtomicU64::new(0));
    let address = refusing_meter(freq, touching.clone()).await;
    let bus = format!(
        "[[bus]]\nname = \"b1\"\nprotocol = \"modbus-tcp\"\naddress = \"{address}\"\n\
         timeout_ms = 500\npoll_interval_s = 1\n"
    );
    let config = gateway_config(dir.path(), &bus, &[(9, "eastron-sdm120")]);
    let policy = OfflinePolicy::default();
    let mut readings = Vec::new();
    let mut touching_at = Vec::new();
    run_bus_until(&config, policy, |ev| {
        if let BusEvent::Reading(r) = ev {
            readings.push(r.clone());
            touching_at.push(touching.load(Ordering::Relaxed));
        }
        readings.len() >= policy.unsupported_attempts as usize + 3
    })
    .await;

    let n = policy.unsupported_attempts as usize;
    // Every poll gave a reading with everything but the refused register.
    for r in &readings {
        assert!(!r.values.contains_key("frequency_hz"));
        assert_eq!(r.values.len(), model.registers.len() - 1, "{r:?}");
    }
    // Tried in each of the first N polls, never after.
    assert!(touching_at[0] >= 1);
    for k in 1..n {
        assert!(
            touching_at[k] > touching_at[k - 1],
            "poll {k}: {touching_at:?}"
        );
    }
    for k in n..readings.len() {
        assert_eq!(
            touching_at[k],
            touching_at[n - 1],
            "poll {k}: {touching_at:?}"
        );
    }
}
