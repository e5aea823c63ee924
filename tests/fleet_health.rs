//! Fleet health end to end, against real parts: a real mosquitto, a real `amr-gateway run`
//! process reading a simulated meter on a pseudo-terminal, killed and stopped with real
//! signals.
//!
//! - The retained `amr/gw1/health` message appears with its fields: version, uptime, start
//!   reason, CPU, memory, disk and its watermark, store, backlog, the bus (cycle, success,
//!   meters online), the clock, the counters.
//! - A gateway killed with SIGKILL starts again `after_crash`; one stopped with SIGTERM starts
//!   again `normal`. A headend that subscribes late gets the retained one.
//! - `[gateway] log_format = "json"` makes every log line a JSON object.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::{Gateway, Mosquitto, Received, SimRuntime, Subscriber, log_tail};

/// An upper bound for a slow shared machine, not a speed requirement.
const PATIENCE: Duration = Duration::from_secs(60);

fn healths(received: &[Received]) -> Vec<&Value> {
    received
        .iter()
        .filter(|(topic, _)| topic == "amr/gw1/health")
        .map(|(_, v)| v)
        .collect()
}

/// Waits for a health message that satisfies `ok`, from a fresh subscriber (so a retained one
/// counts too).
async fn health_where(
    port: u16,
    client: &str,
    dir: &std::path::Path,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let fleet = Subscriber::start(port, client, "amr/+/health").await;
    let received = fleet
        .wait_until(PATIENCE, |r| healths(r).iter().any(|h| ok(h)))
        .await
        .unwrap_or_else(|| {
            panic!(
                "no such health message; got {:?}\n{}",
                healths(&fleet.received()),
                log_tail(dir, 30)
            )
        });
    healths(&received)
        .into_iter()
        .rfind(|h| ok(h))
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retained_health_message_and_the_start_reason() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let sims = SimRuntime::new();
    let _sim = sims.start(support::ONE_METER_SIM, "health-sim", dir.path());
    let config = support::one_meter_gateway_config_on(dir.path(), broker.port);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[health]\ninterval_s = 1\n");
    std::fs::write(&config, text).unwrap();

    let mut gw = Gateway::start(&config, "gateway-1.log");
    let reading = |h: &Value| {
        h["buses"]["rs485"]["meters_online"] == 1 && h["buses"]["rs485"]["polls"].as_u64() > Some(0)
    };
    let h = health_where(broker.port, "fleet-1", dir.path(), reading).await;
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(h["start_reason"], "normal", "{h}");
    assert!(h["uptime_s"].as_u64().is_some(), "{h}");
    assert!(h["ts"].as_str().is_some(), "{h}");
    assert!(h["interval_s"].as_u64().is_some(), "{h}");
    assert!(h["cpu_pct"].as_f64().is_some_and(|c| c >= 0.0), "{h}");
    assert!(h["rss_bytes"].as_u64().is_some_and(|b| b > 0), "{h}");
    let disk = &h["disk"];
    let (free, min) = (disk["free_bytes"].as_u64(), disk["free_min_bytes"].as_u64());
    assert!(free.is_some() && min.is_some() && min <= free, "{h}");
    assert!(disk["total_bytes"].as_u64() >= free, "{h}");
    assert!(h["store_bytes"].as_u64().is_some_and(|b| b > 0), "{h}");
    assert!(h["backlog"]["count"].as_u64().is_some(), "{h}");
    assert!(h["backlog"].get("oldest_age_s").is_some(), "{h}");
    let bus = &h["buses"]["rs485"];
    assert_eq!(bus["meters_total"], 1, "{h}");
    assert!(bus["success_pct"].as_f64().is_some_and(|p| p > 0.0), "{h}");
    assert!(bus.get("cycle_s").is_some(), "{h}");
    assert!(h["clock"]["synchronized"].is_boolean(), "{h}");
    assert!(h["clock"]["source"].is_string(), "{h}");
    // The machine's clock is later than the build date.
    assert_eq!(h["clock"]["sane"], true, "{h}");
    assert_eq!(h["commands_rejected"]["total"], 0, "{h}");
    assert_eq!(h["readings_dropped"], 0, "{h}");
    assert!(h["alarms_active"].as_u64().is_some(), "{h}");

    // SIGKILL: the next start is after a crash (same boot), and says so in its health.
    gw.kill();
    let mut gw = Gateway::start(&config, "gateway-2.log");
    let h = health_where(broker.port, "fleet-2", dir.path(), |h| {
        h["start_reason"] == "after_crash"
    })
    .await;
    assert!(h["uptime_s"].as_u64().is_some(), "{h}");

    // SIGTERM: a clean stop; the next start is normal.
    let status = gw.terminate();
    assert!(status.success(), "{status:?}\n{}", log_tail(dir.path(), 30));
    // And the next one logs JSON lines, as the configuration asks.
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen(
        "data_dir = \"data\"\n",
        "data_dir = \"data\"\nlog_format = \"json\"\n",
        1,
    );
    std::fs::write(&config, text).unwrap();
    let _gw = Gateway::start(&config, "gateway-3.log");
    let h = health_where(broker.port, "fleet-3", dir.path(), |h| {
        h["start_reason"] == "normal"
    })
    .await;
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    let log = std::fs::read_to_string(dir.path().join("gateway-3.log")).unwrap();
    assert!(log.lines().count() > 0);
    for line in log.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
}

/// `amr-gateway run` with libfaketime preloaded, its clock starting at 2020-01-01 (before the
/// build date) and running on, as a box without a real-time clock or NTP would have it.
/// `None` (the test passes with a note) where libfaketime is not installed (CI installs the
/// `faketime` package: .ci/run). Preloaded into the gateway itself, not through the `faketime`
/// wrapper, so that killing the process kills the gateway.
fn start_in_2020(config: &std::path::Path, log_name: &str) -> Option<Gateway> {
    let lib = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.is_file());
    let Some(lib) = lib else {
        eprintln!("note: libfaketime is not installed here; skipping (CI installs it)");
        return None;
    };
    Some(Gateway::start_with(
        config,
        log_name,
        env!("CARGO_BIN_EXE_amr-gateway"),
        &[
            ("LD_PRELOAD", lib.to_str().unwrap()),
            ("FAKETIME", "@2020-01-01 00:00:00"),
        ],
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_before_the_build_date_marks_the_readings_and_raises_its_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let sims = SimRuntime::new();
    let _sim = sims.start(support::ONE_METER_SIM, "clock-sim", dir.path());
    let config = support::one_meter_gateway_config_on(dir.path(), broker.port);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[health]\ninterval_s = 1\n");
    std::fs::write(&config, text).unwrap();
    let headend = Subscriber::start(broker.port, "headend-clock", "amr/gw1/#").await;
    let Some(_gw) = start_in_2020(&config, "gateway.log") else {
        return;
    };
    let marked = |r: &Received| r.0 == "amr/gw1/reading/m1" && r.1["clock"] == "unsynchronized";
    let alarm =
        |r: &Received| r.0 == "amr/gw1/alarm/clock_unsynchronized/gw1" && r.1["state"] == "raised";
    let insane = |r: &Received| r.0 == "amr/gw1/health" && r.1["clock"]["sane"] == false;
    let received = headend
        .wait_until(PATIENCE, |r| {
            r.iter().any(marked) && r.iter().any(alarm) && r.iter().any(insane)
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no marked reading, alarm and health; got {:?}\n{}",
                headend.received().iter().map(|r| &r.0).collect::<Vec<_>>(),
                log_tail(dir.path(), 30)
            )
        });
    let reading = received.iter().find(|r| marked(r)).unwrap();
    assert!(
        reading.1["ts"]
            .as_str()
            .is_some_and(|t| t.starts_with("2020-")),
        "{}",
        reading.1
    );
    let raised = received.iter().find(|r| alarm(r)).unwrap();
    assert_eq!(raised.1["subject"], "gw1", "{}", raised.1);
    assert!(
        raised.1["details"]["clock"]
            .as_str()
            .or(raised.1["clock"].as_str())
            .is_some_and(|t| t.starts_with("2020-")),
        "{}",
        raised.1
    );
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap();
    assert!(log.contains("the clock is not sane"), "{log}");
}
