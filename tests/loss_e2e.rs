//! Line loss end to end, through the whole path: simulated transformer areas that know their
//! truth (meters on real pseudo-terminals speaking Modbus RTU at 19200 baud), the gateway as a
//! real `amr-gateway run` process, and a real mosquitto with a headend subscriber. The loss
//! messages the headend receives are compared with the simulator's truth file.
//!
//! One gateway run serves five areas at once, each its own simulator with its own buses, so the
//! scenarios run side by side instead of one after the other:
//!
//! - `acc`: a supply meter behind CTs and six customers on two buses — five with residential
//!   and random-walk profiles and a steady base load (a pumping station), so that, as in a
//!   real area, no single customer's switching is more than a few % of the area's load; 30-s
//!   intervals; every complete interval must match the truth within [`TOLERANCE_PP`] (one may
//!   be off by up to [`HICCUP_TOLERANCE_PP`]: a timing hiccup, below); nobody is ever listed as
//!   a suspect. The naive figure (latest reading of each meter at the boundary) is computed
//!   beside it and printed, not asserted.
//! - `theft`: a customer bypasses half of its 5 kW from about [`THEFT_AFTER_MS`] after the
//!   start: it is ranked first in `suspects` within [`THEFT_DETECT_INTERVALS`] intervals,
//!   nobody is listed before, and the loss (theft included) still matches the truth; the loss
//!   goes above `high_loss_pct`, so `high_loss` is raised.
//! - `mult`: a customer's registers read 1.5 × the truth (a wrong CT ratio in the meter file):
//!   `negative_loss` is raised with the interval's figures; fixed, it clears once.
//! - `repl`: a customer's meter is replaced mid-run (its register restarts at 0): the loss
//!   still matches the truth, the first read of the new meter is flagged `reset` (3) in the
//!   history, and no loss alarm is raised.
//! - `miss`: a customer stops answering: its intervals are published `complete: false` with
//!   the meter in `missing` and coverage below 100 %; once it answers again intervals are
//!   complete and right again.
//!
//! Time is compressed: the scenario areas close an interval every 10 s (the shortest the
//! configuration allows), the accuracy area every 30 s, against the field's 900 s; the
//! simulator's truth intervals are the same wall-clock-aligned spans. Two effects that vanish
//! at 900 s then bound what can be checked, and shaped the scenarios:
//!
//! - timing: the loss of an interval is exact only if each boundary read is stamped when the
//!   meter sampled it; on this shared machine a simulated meter now and then samples 10-15 ms
//!   after the gateway sent the request (scheduling), and 10 ms on the supply meter is 0.1 pp
//!   of a 10-s interval, 0.03 pp of a 30-s one (0.001 pp of 900 s). Hence 30 s for the 0.05 pp
//!   check, and [`SCENARIO_TOLERANCE_PP`] on the 10-s areas. The simulators run on a runtime of
//!   their own so the test's own work never adds to it.
//! - steps: simulated loads step every 10 s, exactly on the boundaries, and a meter's value at
//!   a boundary is interpolated between reads about 1 s apart along a smooth curve, which
//!   misses a step of ΔP by up to ΔP × 1 s / 8. Hence the area mix above (no single switching
//!   is more than a few % of the load, as in a real area of a hundred customers), and staged
//!   changes (theft, scale, fault, replacement) made in the middle of an interval.
//!
//! Waits are upper bounds for a slow shared machine, never speed requirements.

mod support;

use amr_gateway::clock::{now_ms, rfc3339_ms};
use amr_gateway::sim::{Fault, SimHandle, TruthRecord, read_truth};
use amr_gateway::store::Store;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{Gateway, Mosquitto, Received, SimRuntime, Subscriber, log_tail, ts_field};

/// Upper bound for any one wait on a slow shared machine; never a speed requirement.
const PATIENCE: Duration = Duration::from_secs(200);
/// `[[area]] loss_interval_s` and the simulator's `truth_interval_s`, ms.
const INTERVAL_MS: i64 = 10_000;
/// The accuracy area's intervals, ms (see the module documentation).
const ACC_INTERVAL_MS: i64 = 30_000;
/// The gateway's interval loss against the truth, percentage points (the issue's promise),
/// checked on the accuracy area.
const TOLERANCE_PP: f64 = 0.05;
/// At most one accuracy interval may be off by more than [`TOLERANCE_PP`], by at most this:
/// a read sampled up to ~60 ms off its stamp (a scheduling hiccup of the shared machine, see
/// the module documentation).
const HICCUP_TOLERANCE_PP: f64 = 0.2;
/// The same check on the 10-s scenario areas, whose purpose is elsewhere (suspects, alarms,
/// flags): wrong figures (a sign, a double count, a replacement counted as consumption) are
/// off by whole percents; a supply read sampled 40 ms off its stamp is 0.4 pp of 10 s.
const SCENARIO_TOLERANCE_PP: f64 = 0.5;
/// The `theft` area's thief starts bypassing half of its 5 kW about this long after the start
/// (in the middle of an interval), ms.
const THEFT_AFTER_MS: i64 = 50_000;
/// The thief must be ranked first within this many intervals of the theft's start.
const THEFT_DETECT_INTERVALS: i64 = 6;
/// The `repl` area's customer is replaced about this long after the start, ms.
const REPLACED_AFTER_MS: i64 = 40_000;
/// Complete `acc` intervals compared with the truth, at least.
const MIN_ACC_INTERVALS: usize = 4;

/// One simulated meter and how the gateway sees it.
struct Meter {
    id: &'static str,
    bus: &'static str,
    unit: u8,
    model: &'static str,
    multiplier: f64,
    supply: bool,
    /// More simulator keys (profile, load, energy_start_kwh, scenario knobs).
    sim_keys: &'static str,
}

/// One transformer area: its own simulator, buses and truth file.
struct AreaDef {
    id: &'static str,
    /// `loss_interval_s` and `truth_interval_s`, ms.
    interval_ms: i64,
    loss_coeff: f64,
    no_load_loss_kw: f64,
    high_loss_pct: f64,
    meters: Vec<Meter>,
}

impl AreaDef {
    fn buses(&self) -> Vec<&'static str> {
        let mut out: Vec<&str> = Vec::new();
        for m in &self.meters {
            if !out.contains(&m.bus) {
                out.push(m.bus);
            }
        }
        out
    }

    fn truth_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("truth-{}.jsonl", self.id))
    }

    fn sim_text(&self) -> String {
        let mut t = format!(
            "[area]\nid = \"{}\"\ntruth = \"truth-{}.jsonl\"\ntruth_interval_s = {}\n\
             loss_coeff = {}\nno_load_loss_kw = {}\n",
            self.id,
            self.id,
            self.interval_ms / 1000,
            self.loss_coeff,
            self.no_load_loss_kw
        );
        for bus in self.buses() {
            t += &format!(
                "\n[[bus]]\nname = \"{bus}\"\nlink = \"tty-{bus}\"\nbaud = 19200\nturnaround_ms = 5\n"
            );
        }
        for m in &self.meters {
            t += &format!(
                "\n[[meter]]\nbus = \"{}\"\nunit = {}\nid = \"{}\"\nmodel = \"{}\"\nrole = \"{}\"\n\
                 multiplier = {}\n{}\n",
                m.bus,
                m.unit,
                m.id,
                m.model,
                if m.supply { "supply" } else { "customer" },
                m.multiplier,
                m.sim_keys
            );
        }
        t
    }
}

fn customer(id: &'static str, bus: &'static str, unit: u8, sim_keys: &'static str) -> Meter {
    Meter {
        id,
        bus,
        unit,
        model: "eastron-sdm120",
        multiplier: 1.0,
        supply: false,
        sim_keys,
    }
}

fn supply(id: &'static str, bus: &'static str, multiplier: f64, sim_keys: &'static str) -> Meter {
    Meter {
        id,
        bus,
        unit: 1,
        model: "chint-dtsu666",
        multiplier,
        supply: true,
        sim_keys,
    }
}

/// The five areas. Registers start small so that float32 registers resolve a 10-s interval's
/// energy far below the tolerance.
fn areas() -> Vec<AreaDef> {
    vec![
        AreaDef {
            id: "acc",
            interval_ms: ACC_INTERVAL_MS,
            loss_coeff: 0.002,
            no_load_loss_kw: 0.05,
            high_loss_pct: 10.0,
            meters: vec![
                supply(
                    "acc-s",
                    "acc-1",
                    40.0,
                    "energy_start_kwh = 0.5\nvoltage_v = 231.0",
                ),
                customer(
                    "acc-c1",
                    "acc-1",
                    11,
                    "profile = \"residential\"\nseed = 11\nload_kw = 0.25\nenergy_start_kwh = 3.0",
                ),
                customer(
                    "acc-c2",
                    "acc-1",
                    12,
                    "profile = \"random-walk\"\nseed = 12\nload_kw = 1.5\nenergy_start_kwh = 7.0",
                ),
                customer(
                    "acc-c3",
                    "acc-2",
                    21,
                    "profile = \"residential\"\nseed = 21\nload_kw = 0.2\nenergy_start_kwh = 1.0",
                ),
                customer(
                    "acc-c4",
                    "acc-2",
                    22,
                    "profile = \"random-walk\"\nseed = 22\nload_kw = 1.2\nenergy_start_kwh = 5.0",
                ),
                customer(
                    "acc-c5",
                    "acc-2",
                    23,
                    "profile = \"residential\"\nseed = 23\nload_kw = 0.25\nenergy_start_kwh = 2.0",
                ),
                // The area's base: a pumping station, steady.
                customer(
                    "acc-c6",
                    "acc-2",
                    24,
                    "load_kw = 6.0\nenergy_start_kwh = 9.0",
                ),
            ],
        },
        AreaDef {
            id: "theft",
            interval_ms: INTERVAL_MS,
            loss_coeff: 0.002,
            no_load_loss_kw: 0.05,
            high_loss_pct: 10.0,
            meters: vec![
                supply("theft-s", "theft-1", 20.0, "energy_start_kwh = 0.2"),
                customer(
                    "theft-thief",
                    "theft-1",
                    11,
                    "load_kw = 5.0\nenergy_start_kwh = 4.0\ntheft_fraction = 0.5\ntheft_from_s = {THEFT_FROM_S}",
                ),
                customer(
                    "theft-c2",
                    "theft-1",
                    12,
                    "profile = \"random-walk\"\nseed = 32\nload_kw = 1.5\nenergy_start_kwh = 6.0",
                ),
                customer(
                    "theft-c3",
                    "theft-1",
                    13,
                    "profile = \"residential\"\nseed = 33\nload_kw = 0.3\nenergy_start_kwh = 2.0",
                ),
                customer(
                    "theft-c4",
                    "theft-1",
                    14,
                    "load_kw = 4.0\nenergy_start_kwh = 9.0",
                ),
            ],
        },
        AreaDef {
            id: "mult",
            interval_ms: INTERVAL_MS,
            loss_coeff: 0.002,
            no_load_loss_kw: 0.02,
            high_loss_pct: 10.0,
            meters: vec![
                supply("mult-s", "mult-1", 1.0, "energy_start_kwh = 1.0"),
                customer(
                    "mult-c1",
                    "mult-1",
                    11,
                    "load_kw = 4.0\nenergy_start_kwh = 3.0",
                ),
                customer(
                    "mult-c2",
                    "mult-1",
                    12,
                    "profile = \"random-walk\"\nseed = 42\nload_kw = 1.0\nenergy_start_kwh = 2.0",
                ),
            ],
        },
        AreaDef {
            id: "repl",
            interval_ms: INTERVAL_MS,
            loss_coeff: 0.002,
            no_load_loss_kw: 0.05,
            high_loss_pct: 10.0,
            meters: vec![
                supply("repl-s", "repl-1", 10.0, "energy_start_kwh = 0.4"),
                customer(
                    "repl-c1",
                    "repl-1",
                    11,
                    "load_kw = 3.0\nenergy_start_kwh = 20.0\nreplaced_at_s = {REPLACED_AT_S}\nreplacement_start_kwh = 0.0",
                ),
                customer(
                    "repl-c2",
                    "repl-1",
                    12,
                    "profile = \"random-walk\"\nseed = 52\nload_kw = 1.0\nenergy_start_kwh = 4.0",
                ),
                customer(
                    "repl-c3",
                    "repl-1",
                    13,
                    "profile = \"residential\"\nseed = 53\nload_kw = 0.3\nenergy_start_kwh = 8.0",
                ),
            ],
        },
        AreaDef {
            id: "miss",
            interval_ms: INTERVAL_MS,
            loss_coeff: 0.002,
            no_load_loss_kw: 0.05,
            high_loss_pct: 10.0,
            meters: vec![
                supply("miss-s", "miss-1", 10.0, "energy_start_kwh = 0.3"),
                customer(
                    "miss-c1",
                    "miss-1",
                    11,
                    "load_kw = 2.5\nenergy_start_kwh = 5.0",
                ),
                customer(
                    "miss-c2",
                    "miss-1",
                    12,
                    "profile = \"random-walk\"\nseed = 62\nload_kw = 1.0\nenergy_start_kwh = 6.0",
                ),
                customer(
                    "miss-c3",
                    "miss-1",
                    13,
                    "profile = \"residential\"\nseed = 63\nload_kw = 0.3\nenergy_start_kwh = 7.0",
                ),
            ],
        },
    ]
}

fn gateway_config(dir: &Path, mqtt_port: u16, areas: &[AreaDef]) -> PathBuf {
    let mut t = format!(
        r#"
[gateway]
id = "gw"
data_dir = "data"

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
reconnect_max_s = 2

[loss]
grace_s = 6
clear_after_intervals = 2
"#
    );
    for a in areas {
        for bus in a.buses() {
            t += &format!(
                "\n[[bus]]\nname = \"{bus}\"\nprotocol = \"modbus-rtu\"\ndevice = \"tty-{bus}\"\n\
                 baud = 19200\ntimeout_ms = 500\npoll_interval_s = 1\n"
            );
        }
        for m in &a.meters {
            t += &format!(
                "\n[[meter]]\nid = \"{}\"\nbus = \"{}\"\nunit = {}\nmodel = \"{}\"\nmultiplier = {}\n",
                m.id, m.bus, m.unit, m.model, m.multiplier
            );
        }
        let supply: Vec<String> = a
            .meters
            .iter()
            .filter(|m| m.supply)
            .map(|m| format!("\"{}\"", m.id))
            .collect();
        let customers: Vec<String> = a
            .meters
            .iter()
            .filter(|m| !m.supply)
            .map(|m| format!("\"{}\"", m.id))
            .collect();
        t += &format!(
            "\n[[area]]\nid = \"{}\"\nsupply = [{}]\ncustomers = [{}]\nloss_interval_s = {}\n\
             high_loss_pct = {}\nnegative_loss_pct = -1\n",
            a.id,
            supply.join(", "),
            customers.join(", "),
            a.interval_ms / 1000,
            a.high_loss_pct
        );
    }
    let path = dir.join("gateway.toml");
    std::fs::write(&path, t).unwrap();
    path
}

/// The loss messages of `area`, in arrival order.
fn losses<'a>(received: &'a [Received], area: &str) -> Vec<&'a Value> {
    let topic = format!("amr/gw/loss/{area}");
    received
        .iter()
        .filter(|(t, _)| *t == topic)
        .map(|(_, j)| j)
        .collect()
}

/// The alarm events on `alarm/{kind}/{subject}`, in arrival order.
fn alarm_events<'a>(received: &'a [Received], kind: &str, subject: &str) -> Vec<&'a Value> {
    let topic = format!("amr/gw/alarm/{kind}/{subject}");
    received
        .iter()
        .filter(|(t, _)| *t == topic)
        .map(|(_, j)| j)
        .collect()
}

fn complete(j: &Value) -> bool {
    j["complete"] == true
}

fn f(j: &Value, field: &str) -> f64 {
    j[field]
        .as_f64()
        .unwrap_or_else(|| panic!("no number `{field}` in {j}"))
}

/// The truth record of the interval starting at `start_ms`.
fn truth_at(truth: &[TruthRecord], start_ms: i64, end_ms: i64) -> Option<&TruthRecord> {
    truth
        .iter()
        .find(|t| t.start_ms == start_ms && t.end_ms == end_ms)
}

/// Net (import − export) primary energy of a meter at each of its readings, oldest first.
fn reading_series(received: &[Received]) -> BTreeMap<String, Vec<(i64, f64)>> {
    let mut out: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for (topic, j) in received {
        if !topic.starts_with("amr/gw/reading/") {
            continue;
        }
        let values = &j["values"];
        let Some(import) = values["energy_import_kwh"].as_f64() else {
            continue;
        };
        let export = values["energy_export_kwh"].as_f64().unwrap_or(0.0);
        let meter = j["meter"].as_str().unwrap().to_string();
        out.entry(meter)
            .or_default()
            .push((ts_field(j, "ts"), import - export));
    }
    for s in out.values_mut() {
        s.sort_by_key(|(t, _)| *t);
    }
    out
}

/// The naive loss of `[start, end)`: each meter's latest reading at or before each boundary.
fn naive_loss_pct(
    area: &AreaDef,
    series: &BTreeMap<String, Vec<(i64, f64)>>,
    start: i64,
    end: i64,
) -> Option<f64> {
    let at = |id: &str, b: i64| -> Option<f64> {
        series
            .get(id)?
            .iter()
            .rev()
            .find(|(t, _)| *t <= b)
            .map(|(_, e)| *e)
    };
    let (mut supplied, mut sold) = (0.0, 0.0);
    for m in &area.meters {
        let e = at(m.id, end)? - at(m.id, start)?;
        if m.supply {
            supplied += e;
        } else {
            sold += e;
        }
    }
    (supplied > 0.0).then(|| (supplied - sold) / supplied * 100.0)
}

/// The first instant at or after `t_ms` in the middle of a loss interval.
fn mid_interval_after(t_ms: i64) -> i64 {
    let mid = t_ms - t_ms.rem_euclid(INTERVAL_MS) + INTERVAL_MS / 2;
    if mid >= t_ms { mid } else { mid + INTERVAL_MS }
}

/// Sleeps until the middle of the current or next loss interval, so that a staged step
/// happens away from the boundaries.
async fn sleep_to_mid_interval() {
    let wait = mid_interval_after(now_ms()) - now_ms();
    tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
}

async fn wait(
    headend: &Subscriber,
    dir: &Path,
    what: &str,
    done: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    headend
        .wait_until(PATIENCE, done)
        .await
        .unwrap_or_else(|| panic!("{what}: not seen in time\n{}", log_tail(dir, 40)))
}

/// `mult`: once two complete intervals are in, a customer's registers read 1.5 × the truth;
/// when negative_loss is raised the scale is put back, and the test waits for the clear.
/// Returns the instants (ms) of the staging and of the fix.
async fn stage_wrong_scale(headend: &Subscriber, sim: &SimHandle, dir: &Path) -> (i64, i64) {
    wait(headend, dir, "two complete mult intervals", |r| {
        losses(r, "mult").iter().filter(|j| complete(j)).count() >= 2
    })
    .await;
    sleep_to_mid_interval().await;
    let mut c = sim.conditions("mult-1", 11).unwrap();
    c.register_scale = 1.5;
    sim.set_conditions("mult-1", 11, c.clone()).unwrap();
    let staged = now_ms();
    wait(headend, dir, "negative_loss raised on mult", |r| {
        !alarm_events(r, "negative_loss", "mult").is_empty()
    })
    .await;
    sleep_to_mid_interval().await;
    c.register_scale = 1.0;
    sim.set_conditions("mult-1", 11, c).unwrap();
    let fixed = now_ms();
    wait(headend, dir, "negative_loss cleared on mult", |r| {
        alarm_events(r, "negative_loss", "mult")
            .iter()
            .any(|j| j["state"] == "cleared")
    })
    .await;
    (staged, fixed)
}

/// `miss`: once two complete intervals are in, a customer stops answering until an interval
/// lists it as missing; then it answers again, until a complete interval closes after that.
/// Returns the instants (ms) the fault was set and lifted.
async fn stage_missing_meter(headend: &Subscriber, sim: &SimHandle, dir: &Path) -> (i64, i64) {
    wait(headend, dir, "two complete miss intervals", |r| {
        losses(r, "miss").iter().filter(|j| complete(j)).count() >= 2
    })
    .await;
    sleep_to_mid_interval().await;
    sim.set_fault(
        "miss-1",
        11,
        Fault {
            no_reply: true,
            ..Fault::default()
        },
    )
    .unwrap();
    let failed = now_ms();
    wait(headend, dir, "an interval with miss-c1 missing", |r| {
        losses(r, "miss").iter().any(|j| {
            j["missing"]
                .as_array()
                .is_some_and(|m| m.iter().any(|x| x == "miss-c1"))
        })
    })
    .await;
    sim.set_fault("miss-1", 11, Fault::default()).unwrap();
    let back = now_ms();
    wait(
        headend,
        dir,
        "a complete miss interval after the meter is back",
        |r| {
            losses(r, "miss")
                .iter()
                .any(|j| complete(j) && ts_field(j, "start") > back)
        },
    )
    .await;
    (failed, back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_matches_the_truth_and_points_at_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let broker = Mosquitto::start();
    let headend = Subscriber::start(broker.port, "headend-loss", "amr/gw/#").await;
    let areas = areas();
    // Staged steps happen in the middle of an interval, away from the boundaries.
    let t0 = now_ms();
    let theft_from_ms = mid_interval_after(t0 + THEFT_AFTER_MS);
    let replaced_ms = mid_interval_after(t0 + REPLACED_AFTER_MS);
    let sim_runtime = SimRuntime::new();
    let mut sims: BTreeMap<&str, SimHandle> = BTreeMap::new();
    for a in &areas {
        let started = now_ms();
        let s = |at_ms: i64| format!("{:.3}", (at_ms - started) as f64 / 1000.0);
        let text = a
            .sim_text()
            .replace("{THEFT_FROM_S}", &s(theft_from_ms))
            .replace("{REPLACED_AT_S}", &s(replaced_ms));
        let sim = sim_runtime.start(&text, &format!("sim-{}.toml", a.id), dir);
        sims.insert(a.id, sim);
    }
    let config = gateway_config(dir, broker.port, &areas);
    let mut gw = Gateway::start(&config, "gateway.log");
    let run_started = now_ms();

    let mult_sim = sims["mult"].clone();
    let miss_sim = sims["miss"].clone();
    let (mult, miss, _, _, _) = tokio::join!(
        stage_wrong_scale(&headend, &mult_sim, dir),
        stage_missing_meter(&headend, &miss_sim, dir),
        wait(&headend, dir, "the thief ranked first", |r| {
            losses(r, "theft")
                .iter()
                .any(|j| j["suspects"][0]["meter"] == "theft-thief")
        }),
        wait(
            &headend,
            dir,
            "three repl intervals after the replacement",
            |r| {
                losses(r, "repl")
                    .iter()
                    .filter(|j| ts_field(j, "start") > replaced_ms)
                    .count()
                    >= 3
            }
        ),
        wait(&headend, dir, "enough complete acc intervals", |r| {
            losses(r, "acc").iter().filter(|j| complete(j)).count() >= MIN_ACC_INTERVALS
        }),
    );
    assert!(
        gw.terminate().success(),
        "SIGTERM should end the gateway cleanly\n{}",
        log_tail(dir, 40)
    );
    let took_s = (now_ms() - run_started) / 1000;
    let received = headend.received();
    let series = reading_series(&received);

    // ---- Every area: complete intervals against the truth; the naive figure beside it.
    println!("gateway ran {took_s} s");
    println!("area   interval                  truth %   gateway %  err pp   naive %   err pp");
    let mut worst: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    let mut hiccups: Vec<String> = Vec::new();
    for a in &areas {
        let truth = read_truth(&a.truth_path(dir)).expect("truth file");
        let tolerance = if a.id == "acc" {
            TOLERANCE_PP
        } else {
            SCENARIO_TOLERANCE_PP
        };
        let mut compared = 0;
        for j in losses(&received, a.id) {
            let start = ts_field(j, "start");
            let end = ts_field(j, "end");
            assert_eq!(end - start, a.interval_ms, "{j}");
            assert_eq!(start % a.interval_ms, 0, "intervals are aligned: {j}");
            if !complete(j) {
                continue;
            }
            let t = truth_at(&truth, start, end)
                .unwrap_or_else(|| panic!("no truth record for {}: {j}", j["start"]));
            assert!(!t.partial);
            // With a metering fault staged the gateway should see what the registers counted.
            let want = if a.id == "mult" {
                let reg = &t.registered;
                let s: f64 = a
                    .meters
                    .iter()
                    .filter(|m| m.supply)
                    .map(|m| reg[m.id])
                    .sum();
                let c: f64 = a
                    .meters
                    .iter()
                    .filter(|m| !m.supply)
                    .map(|m| reg[m.id])
                    .sum();
                (s - c) / s * 100.0
            } else {
                t.loss_pct.expect("something was supplied")
            };
            let got = f(j, "loss_pct");
            let err = got - want;
            let naive = naive_loss_pct(a, &series, start, end);
            let naive_err = naive.map(|n| n - want);
            println!(
                "{:6} {} {:9.4} {:9.4} {:+8.4} {:>9} {:>8}",
                a.id,
                j["start"].as_str().unwrap(),
                want,
                got,
                err,
                naive.map_or("-".into(), |n| format!("{n:.4}")),
                naive_err.map_or("-".into(), |e| format!("{e:+.4}"))
            );
            compared += 1;
            if std::env::var_os("LOSS_E2E_DETAIL").is_some() {
                for (id, kwh) in j["meters"].as_object().unwrap() {
                    let truth_kwh = if a.id == "mult" {
                        t.registered[id]
                    } else {
                        t.meters[id]
                    };
                    println!(
                        "         {id:12} gateway {:.6} truth {truth_kwh:.6} diff {:+.7} kWh",
                        kwh.as_f64().unwrap(),
                        kwh.as_f64().unwrap() - truth_kwh
                    );
                }
            }
            let w = worst.entry(a.id).or_insert((0.0, 0.0));
            w.1 = w.1.max(naive_err.map_or(0.0, f64::abs));
            if a.id == "repl" && start <= replaced_ms && replaced_ms < end {
                // What the old meter counted after its last read and before the swap was seen
                // by nobody: the gateway bridges from that read, so it misses exactly the
                // load (3 kW) over that gap, and nothing else.
                let c1 = &series["repl-c1"];
                let swap = c1
                    .windows(2)
                    .position(|w| w[1].1 < w[0].1)
                    .expect("a swap in the reads");
                let (last_old_ms, first_new_ms) = (c1[swap].0, c1[swap + 1].0);
                assert!(last_old_ms <= replaced_ms + 50 && replaced_ms <= first_new_ms + 50);
                let unseen_kwh = 3.0 * (replaced_ms - last_old_ms) as f64 / 3_600_000.0;
                let c1_err = f(&j["meters"], "repl-c1") - t.meters["repl-c1"];
                println!("repl: unseen {unseen_kwh:.7} kWh, repl-c1 off by {c1_err:+.7} kWh");
                assert!(
                    (c1_err + unseen_kwh).abs() < 2e-5,
                    "repl-c1 over the swap: off by {c1_err:+.7} kWh, unseen {unseen_kwh:.7} kWh: {j}"
                );
                let others = err + c1_err / t.supply_kwh * 100.0;
                assert!(
                    others.abs() <= SCENARIO_TOLERANCE_PP,
                    "repl: the other meters are off by {others:.4} pp: {j}"
                );
                continue;
            }
            w.0 = w.0.max(err.abs());
            if a.id == "acc" && err.abs() > TOLERANCE_PP && err.abs() <= HICCUP_TOLERANCE_PP {
                hiccups.push(format!("{} off by {err:+.4} pp", j["start"]));
                continue;
            }
            assert!(
                err.abs() <= tolerance,
                "{}: interval {} loss {got:.4} % vs truth {want:.4} % (off by {err:+.4} pp)\n{j}",
                a.id,
                j["start"]
            );
        }
        assert!(
            compared >= 2,
            "{}: only {compared} complete intervals",
            a.id
        );
        if a.id == "acc" {
            assert!(compared >= MIN_ACC_INTERVALS, "acc: {compared} intervals");
        }
    }
    for (area, (aligned, naive)) in &worst {
        println!("{area}: worst error aligned {aligned:.4} pp, naive {naive:.4} pp");
    }
    assert!(
        hiccups.len() <= 1,
        "acc: more than one interval beyond {TOLERANCE_PP} pp: {hiccups:?}"
    );
    if !hiccups.is_empty() {
        println!("acc: one interval beyond {TOLERANCE_PP} pp (a timing hiccup?): {hiccups:?}");
    }

    // ---- Suspects: nobody in the honest area, nobody before the theft; the thief first soon.
    for j in losses(&received, "acc") {
        assert_eq!(j["suspects"], serde_json::json!([]), "acc: {j}");
    }
    let theft = losses(&received, "theft");
    for j in &theft {
        if ts_field(j, "end") <= theft_from_ms {
            assert_eq!(
                j["suspects"],
                serde_json::json!([]),
                "before the theft: {j}"
            );
        }
    }
    let first_hit = theft
        .iter()
        .find(|j| j["suspects"][0]["meter"] == "theft-thief")
        .unwrap();
    let s = &first_hit["suspects"][0];
    assert_eq!(s["reason"], "bypass_signature", "{first_hit}");
    assert!(f(s, "score") >= 4.0, "{first_hit}");
    let intervals_after = (ts_field(first_hit, "end") - theft_from_ms) / INTERVAL_MS;
    println!(
        "theft: ranked first {intervals_after} interval(s) after the theft began: {}",
        s["detail"]
    );
    assert!(
        intervals_after <= THEFT_DETECT_INTERVALS,
        "the thief was ranked first only {intervals_after} intervals after the theft began"
    );
    // The theft pushes the loss above 10 %: one high_loss, with the interval's own figures.
    let high = alarm_events(&received, "high_loss", "theft");
    assert_eq!(high.len(), 1, "{high:?}");
    let h = high[0];
    assert_eq!(h["state"], "raised");
    assert_eq!(h["subject_kind"], "area");
    assert_eq!(f(h, "threshold"), 10.0);
    let hi = theft
        .iter()
        .find(|j| j["start"] == h["start"])
        .expect("high_loss names a published interval");
    assert!(complete(hi));
    assert_eq!(f(h, "value"), f(hi, "loss_pct"), "{h}");
    assert!(f(h, "value") > 10.0);
    assert!(
        ts_field(hi, "end") > theft_from_ms,
        "raised before the theft: {h}"
    );

    // ---- Wrong scale: negative_loss raised once with the interval's figures, cleared once.
    let (staged, fixed) = mult;
    let events = alarm_events(&received, "negative_loss", "mult");
    assert_eq!(events.len(), 2, "{events:?}");
    let (raised, cleared) = (events[0], events[1]);
    assert_eq!(raised["state"], "raised");
    assert_eq!(cleared["state"], "cleared");
    assert_eq!(raised["id"], "negative_loss/mult");
    assert_eq!(raised["severity"], "minor");
    assert_eq!(f(raised, "threshold"), -1.0);
    let mult_losses = losses(&received, "mult");
    let ri = mult_losses
        .iter()
        .find(|j| j["start"] == raised["start"])
        .expect("the raise names a published interval");
    assert!(complete(ri) && ts_field(ri, "start") >= staged - INTERVAL_MS);
    assert_eq!(f(raised, "value"), f(ri, "loss_pct"));
    assert!(f(raised, "value") < -1.0, "{raised}");
    for k in ["supply_kwh", "sales_kwh", "loss_kwh"] {
        assert_eq!(f(raised, k), f(ri, k), "{k}: {raised}");
    }
    let ci = mult_losses
        .iter()
        .find(|j| j["start"] == cleared["start"])
        .expect("the clear names a published interval");
    assert!(
        ts_field(ci, "start") >= fixed,
        "cleared by an interval before the fix: {cleared}"
    );
    assert!(f(cleared, "value") >= -1.0, "{cleared}");
    assert!(f(cleared, "duration_s") > 0.0, "{cleared}");
    // Before the staging nothing was negative; no other area had a loss alarm.
    for a in ["acc", "repl", "miss"] {
        for kind in ["high_loss", "negative_loss"] {
            assert!(
                alarm_events(&received, kind, a).is_empty(),
                "{kind} on {a}: {:?}",
                alarm_events(&received, kind, a)
            );
        }
    }

    // ---- Missing meter: flagged, not guessed silently; complete again once it is back.
    let (failed, back) = miss;
    let miss_losses = losses(&received, "miss");
    let flagged: Vec<&&Value> = miss_losses.iter().filter(|j| !complete(j)).collect();
    assert!(!flagged.is_empty());
    // Until every meter has been read once, the first interval may lack reads before its start.
    let first_complete = miss_losses
        .iter()
        .find(|j| complete(j))
        .map(|j| ts_field(j, "start"))
        .unwrap();
    for j in flagged
        .iter()
        .filter(|j| ts_field(j, "start") > first_complete)
    {
        assert!(
            ts_field(j, "end") > failed,
            "incomplete before the fault: {j}"
        );
        assert_eq!(j["missing"], serde_json::json!(["miss-c1"]), "{j}");
        assert_eq!(f(j, "coverage_pct"), 75.0, "3 of 4 meters: {j}");
        assert!(f(j, "energy_coverage_pct") < 100.0, "{j}");
    }
    for j in miss_losses.iter().filter(|j| complete(j)) {
        assert_eq!(j["missing"], serde_json::json!([]), "{j}");
        assert_eq!(f(j, "coverage_pct"), 100.0, "{j}");
        let (s, e) = (ts_field(j, "start"), ts_field(j, "end"));
        assert!(
            e <= failed + 2_000 || s >= back - 1_000,
            "complete while the meter was silent: {j}"
        );
    }

    // ---- Replacement: the first read of the new meter is flagged `reset` in the history.
    let cfg = amr_gateway::config::load(&config).unwrap();
    let store = Store::open(&cfg.db_path(), &cfg.store).unwrap();
    let flags = store
        .history_quality("repl-c1", replaced_ms - 5_000, replaced_ms + 5_000)
        .unwrap();
    let first_new = flags
        .iter()
        .find(|(t, _)| *t >= replaced_ms)
        .expect("reads after the replacement");
    assert_eq!(
        first_new.1, 3,
        "the first read of the new meter is a reset: {flags:?}"
    );
    assert!(
        flags.iter().filter(|(_, q)| *q != 0).count() == 1,
        "only that read is flagged: {flags:?} (replaced at {})",
        rfc3339_ms(replaced_ms)
    );
}
