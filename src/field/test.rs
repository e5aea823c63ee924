//! `amr-gateway test --config FILE`: every meter of a configuration read once, through the
//! daemon's own path (each bus's driver, with the bus's line settings, timeout and the meter's
//! model and CT/PT ratios), shown as one table — what `telegraf --test` is to Telegraf. A meter
//! that fails is shown with its error; the tool's exit code says whether any did.

use crate::bus::{DeviceLock, Endpoint, OfflinePolicy, driver_for};
use crate::config::Config;
use crate::model::PollOutcome;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The quantities the table shows (all of them go in the JSON).
const KEY_VALUES: [&str; 4] = [
    "energy_import_kwh",
    "power_kw",
    "voltage_l1_v",
    "current_l1_a",
];

/// One meter's row.
#[derive(Debug, Clone)]
pub struct MeterTest {
    pub meter: String,
    pub bus: String,
    /// `unit 5` or `address 000012345678`.
    pub at: String,
    pub model: String,
    /// Answered (fully or in part).
    pub ok: bool,
    /// `ok`, `partial` or the error.
    pub result: String,
    pub values: BTreeMap<String, f64>,
    pub elapsed: Duration,
}

/// Reads every meter of `config` once, bus after bus.
pub async fn test(config: &Config) -> Vec<MeterTest> {
    let mut rows = Vec::new();
    for (bus, meters) in config.bus_settings() {
        let row = |m: &crate::bus::MeterSettings| MeterTest {
            meter: m.id.clone(),
            bus: bus.name.clone(),
            at: match (&m.unit, &m.address) {
                (Some(u), _) => format!("unit {u}"),
                (None, Some(a)) => format!("address {a}"),
                _ => "-".into(),
            },
            model: m.model.name().to_string(),
            ok: false,
            result: String::new(),
            values: BTreeMap::new(),
            elapsed: Duration::ZERO,
        };
        let fail_all = |rows: &mut Vec<MeterTest>, error: String| {
            for m in &meters {
                rows.push(MeterTest {
                    result: error.clone(),
                    ..row(m)
                });
            }
        };
        if let Endpoint::Serial(dev) = &bus.endpoint
            && let Err(e) = DeviceLock::check(dev)
        {
            fail_all(&mut rows, e.to_string());
            continue;
        }
        let mut driver = match driver_for(&bus, &meters, &[], &OfflinePolicy::default()) {
            Ok(d) => d,
            Err(e) => {
                fail_all(&mut rows, e);
                continue;
            }
        };
        if let Err(e) = driver.open().await {
            fail_all(&mut rows, format!("cannot open {}: {e}", bus.endpoint));
            continue;
        }
        let mut previous = None;
        for (i, m) in meters.iter().enumerate() {
            tokio::time::sleep(driver.switch_pause(previous, i)).await;
            previous = Some(i);
            let started = Instant::now();
            let poll = driver.poll(i, false).await;
            let elapsed = started.elapsed();
            let result = match poll.outcome {
                PollOutcome::Ok => "ok".to_string(),
                PollOutcome::Partial => format!(
                    "partial: {}",
                    poll.failures
                        .iter()
                        .map(|f| format!("{}: {}", f.what, f.error))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                _ => poll.error.clone().unwrap_or_else(|| "failed".into()),
            };
            rows.push(MeterTest {
                ok: poll.outcome.answered(),
                result,
                values: poll.reading.map(|r| r.values).unwrap_or_default(),
                elapsed,
                ..row(m)
            });
            if poll.link_broken {
                driver.close();
                if let Err(e) = driver.open().await {
                    for m in &meters[i + 1..] {
                        rows.push(MeterTest {
                            result: format!("cannot open {}: {e}", bus.endpoint),
                            ..row(m)
                        });
                    }
                    break;
                }
            }
        }
    }
    rows
}

/// The table: one line per meter, its key values (primary-side) and time taken.
pub fn table(rows: &[MeterTest]) -> String {
    let w = |f: &dyn Fn(&MeterTest) -> usize, min: usize| {
        rows.iter().map(f).max().unwrap_or(0).max(min)
    };
    let (wm, wb, wa, wo) = (
        w(&|r| r.meter.len(), 5),
        w(&|r| r.bus.len(), 3),
        w(&|r| r.at.len(), 4),
        w(&|r| r.model.len(), 5),
    );
    let mut out = format!(
        "{:<wm$}  {:<wb$}  {:<wa$}  {:<wo$}  {:>14}  {:>10}  {:>9}  {:>10}  {:>7}  result\n",
        "meter", "bus", "at", "model", "import kWh", "power kW", "U1 V", "I1 A", "ms"
    );
    for r in rows {
        let v = |q: &str| {
            r.values
                .get(q)
                .map_or_else(|| "-".to_string(), |v| format!("{v:.3}"))
        };
        out += &format!(
            "{:<wm$}  {:<wb$}  {:<wa$}  {:<wo$}  {:>14}  {:>10}  {:>9}  {:>10}  {:>7}  {}\n",
            r.meter,
            r.bus,
            r.at,
            r.model,
            v(KEY_VALUES[0]),
            v(KEY_VALUES[1]),
            v(KEY_VALUES[2]),
            v(KEY_VALUES[3]),
            r.elapsed.as_millis(),
            r.result
        );
    }
    let failed = rows.iter().filter(|r| !r.ok).count();
    out += &format!(
        "{} of {} meter(s) answered{}\n",
        rows.len() - failed,
        rows.len(),
        if failed > 0 {
            "; `amr-gateway read` shows one meter in detail"
        } else {
            ""
        }
    );
    out
}

pub fn json(rows: &[MeterTest]) -> serde_json::Value {
    let failed = rows.iter().filter(|r| !r.ok).count();
    json!({
        "answered": rows.len() - failed,
        "failed": failed,
        "meters": rows.iter().map(|r| json!({
            "meter": r.meter,
            "bus": r.bus,
            "at": r.at,
            "model": r.model,
            "ok": r.ok,
            "result": r.result,
            "elapsed_ms": r.elapsed.as_millis() as u64,
            "values": r.values.iter()
                .map(|(k, v)| (k.clone(), crate::model::json_number(*v)))
                .collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
    })
}
