//! Alarms end to end, through the whole path: simulated meters staging each condition (on real
//! pseudo-terminals, Modbus RTU), the gateway as a real `amr-gateway run` process, and a real
//! mosquitto with a headend subscriber that sees the alarm events.
//!
//! One gateway run stages every alarm kind at once, each on its own meters, bus or area, so the
//! scenarios run side by side; hold times are set to a few seconds. For each kind: raised once
//! with the right value, threshold, subject and details; cleared once when the condition ends.
//! Besides:
//!
//! - no storm: a voltage oscillating around the upper limit (violated / inside the hysteresis
//!   band, every 2 s) raises nothing; held, it raises once; oscillating again inside the band
//!   it neither clears nor raises again; back to normal it clears once;
//! - a whole silent bus is ONE `area_outage`, with no `meter_offline` for its meters;
//! - nothing is raised that was not staged (the full set of alarm topics is checked);
//! - restarts: the gateway is stopped (SIGTERM) for longer than `min_down_s` and started again
//!   → one `power_off` event (raised, then cleared) with `down_from` / `down_to`; then killed
//!   (SIGKILL) and started at once → no power_off; an alarm standing through both restarts is
//!   never raised a second time, and the retained `alarm/active` a late headend receives lists
//!   exactly the standing set;
//! - voltage quality: a scripted voltage profile on one meter (4 s above the upper limit, 3 s
//!   below the lower one — shorter than the alarm hold, so no alarm); after the clean stop the
//!   day's figures in the store (`meta analytics/voltage`, the snapshot `status` and the daily
//!   record are made from) must equal the time-weighted figures computed by hand from the
//!   stored reads, and match the script within one poll period.
//!
//! Waits are upper bounds for a slow shared machine, never speed requirements.

mod support;

use amr_gateway::analytics::voltage::VoltageSnapshot;
use amr_gateway::clock::{now_ms, rfc3339_ms};
use amr_gateway::sim::{Fault, MeterConditions, Phase, SimHandle};
use amr_gateway::store::{MetaKey, Store};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{Gateway, Mosquitto, Received, SimRuntime, Subscriber, log_tail, ts_field};

/// Upper bound for any one wait on a slow shared machine; never a speed requirement.
const PATIENCE: Duration = Duration::from_secs(120);
/// `[alarms.voltage] raise_after_s`; the oscillation's half period is well below it.
const VOLTAGE_RAISE_S: i64 = 5;
/// Half period of the oscillation around the upper voltage limit.
const TOGGLE: Duration = Duration::from_secs(2);
/// A reading is stamped when its request is sent; the simulator samples a moment later, so a
/// condition staged in between shows in a reading stamped just before the staging.
const SLACK_MS: i64 = 200;
/// `[alarms.power_off] min_down_s`.
const MIN_DOWN_S: i64 = 4;
/// The replaced meter's swap, seconds after its simulator started.
const REPLACED_AT_S: i64 = 30;
/// Its register before the swap (kWh), and after.
const REPL_START_KWH: f64 = 50.0;

/// Simulator 1: the staged meters on four buses, and area `ov` (overload) on a fifth.
const SIM_1: &str = r#"
[area]
id = "ov"

[[bus]]
name = "v"
link = "tty-v"
baud = 38400
turnaround_ms = 5

[[bus]]
name = "p"
link = "tty-p"
baud = 38400
turnaround_ms = 5

[[bus]]
name = "r"
link = "tty-r"
baud = 38400
turnaround_ms = 5

[[bus]]
name = "s"
link = "tty-s"
baud = 38400
turnaround_ms = 5

[[bus]]
name = "ov-bus"
link = "tty-ov"
baud = 38400
turnaround_ms = 5

# bus v: voltages
[[meter]]
bus = "v"
unit = 1
id = "vh"
model = "eastron-sdm120"
[[meter]]
bus = "v"
unit = 2
id = "vl"
model = "eastron-sdm120"
[[meter]]
bus = "v"
unit = 3
id = "osc"
model = "eastron-sdm120"
[[meter]]
bus = "v"
unit = 4
id = "keep"
model = "eastron-sdm120"
[[meter]]
bus = "v"
unit = 5
id = "vq"
model = "eastron-sdm120"

# bus p: three-phase meters
[[meter]]
bus = "p"
unit = 1
id = "pl"
model = "chint-dtsu666"
load_kw = 6.0
[[meter]]
bus = "p"
unit = 2
id = "ub"
model = "chint-dtsu666"
load_kw = 6.0

# bus r: registers and presence
[[meter]]
bus = "r"
unit = 1
id = "rev"
model = "eastron-sdm120"
load_kw = 6.0
energy_start_kwh = 3.0
[[meter]]
bus = "r"
unit = 2
id = "stop"
model = "eastron-sdm120"
load_kw = 2.0
energy_start_kwh = 4.0
[[meter]]
bus = "r"
unit = 3
id = "fast"
model = "eastron-sdm120"
load_kw = 2.0
energy_start_kwh = 5.0
[[meter]]
bus = "r"
unit = 4
id = "repl"
model = "eastron-sdm120"
load_kw = 2.0
energy_start_kwh = 50.0
replaced_at_s = 30.0
replacement_start_kwh = 0.0
[[meter]]
bus = "r"
unit = 5
id = "off"
model = "eastron-sdm120"

# bus s: goes silent as a whole
[[meter]]
bus = "s"
unit = 1
id = "s1"
model = "eastron-sdm120"
[[meter]]
bus = "s"
unit = 2
id = "s2"
model = "eastron-sdm120"
[[meter]]
bus = "s"
unit = 3
id = "s3"
model = "eastron-sdm120"

# area ov: a 10 kVA transformer loaded to about 6.3 kVA
[[meter]]
bus = "ov-bus"
unit = 1
id = "ov-s"
model = "chint-dtsu666"
role = "supply"
[[meter]]
bus = "ov-bus"
unit = 2
id = "ov-c1"
model = "eastron-sdm120"
role = "customer"
load_kw = 3.0
[[meter]]
bus = "ov-bus"
unit = 3
id = "ov-c2"
model = "eastron-sdm120"
role = "customer"
load_kw = 3.0
"#;

/// Simulator 2: area `out`, whose supply voltage is lost.
const SIM_2: &str = r#"
[area]
id = "out"

[[bus]]
name = "out-bus"
link = "tty-out"
baud = 38400
turnaround_ms = 5

[[meter]]
bus = "out-bus"
unit = 1
id = "out-s"
model = "chint-dtsu666"
role = "supply"
[[meter]]
bus = "out-bus"
unit = 2
id = "out-c1"
model = "eastron-sdm120"
role = "customer"
load_kw = 2.0
[[meter]]
bus = "out-bus"
unit = 3
id = "out-c2"
model = "eastron-sdm120"
role = "customer"
load_kw = 2.0
"#;

/// (gateway meter id, bus, unit, model, extra gateway keys)
const METERS: &[(&str, &str, u8, &str, &str)] = &[
    ("vh", "v", 1, "eastron-sdm120", ""),
    ("vl", "v", 2, "eastron-sdm120", ""),
    ("osc", "v", 3, "eastron-sdm120", ""),
    ("keep", "v", 4, "eastron-sdm120", ""),
    ("vq", "v", 5, "eastron-sdm120", ""),
    ("pl", "p", 1, "chint-dtsu666", ""),
    ("ub", "p", 2, "chint-dtsu666", ""),
    ("rev", "r", 1, "eastron-sdm120", "consumption_only = true"),
    ("stop", "r", 2, "eastron-sdm120", ""),
    ("fast", "r", 3, "eastron-sdm120", "rated_kw = 3.0"),
    ("repl", "r", 4, "eastron-sdm120", ""),
    ("off", "r", 5, "eastron-sdm120", ""),
    ("s1", "s", 1, "eastron-sdm120", ""),
    ("s2", "s", 2, "eastron-sdm120", ""),
    ("s3", "s", 3, "eastron-sdm120", ""),
    ("ov-s", "ov-bus", 1, "chint-dtsu666", ""),
    ("ov-c1", "ov-bus", 2, "eastron-sdm120", ""),
    ("ov-c2", "ov-bus", 3, "eastron-sdm120", ""),
    ("out-s", "out-bus", 1, "chint-dtsu666", ""),
    ("out-c1", "out-bus", 2, "eastron-sdm120", ""),
    ("out-c2", "out-bus", 3, "eastron-sdm120", ""),
];

fn gateway_config(dir: &Path, mqtt_port: u16) -> PathBuf {
    let mut t = format!(
        r#"
[gateway]
id = "gw"
data_dir = "data"

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
reconnect_max_s = 2

[alarms.meter_offline]
raise_after_s = 6

[alarms.voltage]
raise_after_s = {VOLTAGE_RAISE_S}
clear_after_s = 3

[alarms.phase_loss]
raise_after_s = 3
clear_after_s = 3

[alarms.current_unbalance]
raise_after_s = 3
clear_after_s = 3

[alarms.overload]
raise_after_s = 3
clear_after_s = 3

[alarms.reverse_energy]
min_increase_kwh = 0.01
window_s = 5
clear_after_s = 4

[alarms.reading_down]
clear_after_s = 5

[alarms.running_fast]
# The SDM120's float registers resolve under 0.001 Wh at a few kWh. The slack must stay below
# what 3× the rate adds over the shortest gap between two reads: a catch-up read after another
# meter's timeouts comes ~0.2 s after the one before (6 kW × 0.2 s = 0.33 Wh, while 3.6 kW
# allowed × 0.2 s = 0.2 Wh; with a slack of 0.2 Wh that read would count as normal).
slack_kwh = 0.00002
clear_after_s = 3

[alarms.meter_stopped]
stopped_after_s = 4

[alarms.outage]
bus_window_s = 5
clear_after_s = 3

[alarms.power_off]
min_down_s = {MIN_DOWN_S}
"#
    );
    for (bus, tty) in [
        ("v", "v"),
        ("p", "p"),
        ("r", "r"),
        ("s", "s"),
        ("ov-bus", "ov"),
        ("out-bus", "out"),
    ] {
        t += &format!(
            "\n[[bus]]\nname = \"{bus}\"\nprotocol = \"modbus-rtu\"\ndevice = \"tty-{tty}\"\n\
             baud = 38400\ntimeout_ms = 500\npoll_interval_s = 1\n"
        );
    }
    for (id, bus, unit, model, extra) in METERS {
        t += &format!(
            "\n[[meter]]\nid = \"{id}\"\nbus = \"{bus}\"\nunit = {unit}\nmodel = \"{model}\"\n{extra}\n"
        );
    }
    t += r#"
[[area]]
id = "ov"
supply = ["ov-s"]
customers = ["ov-c1", "ov-c2"]
rated_kva = 10

[[area]]
id = "out"
supply = ["out-s"]
customers = ["out-c1", "out-c2"]
"#;
    let path = dir.join("gateway.toml");
    std::fs::write(&path, t).unwrap();
    path
}

/// The events on `alarm/{kind}/{subject}`, in arrival order.
fn events<'a>(received: &'a [Received], kind: &str, subject: &str) -> Vec<&'a Value> {
    let topic = format!("amr/gw/alarm/{kind}/{subject}");
    received
        .iter()
        .filter(|(t, _)| *t == topic)
        .map(|(_, j)| j)
        .collect()
}

fn has(received: &[Received], kind: &str, subject: &str, state: &str) -> bool {
    events(received, kind, subject)
        .iter()
        .any(|j| j["state"] == state)
}

fn f(j: &Value, field: &str) -> f64 {
    j[field]
        .as_f64()
        .unwrap_or_else(|| panic!("no number `{field}` in {j}"))
}

fn near(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol
}

struct Run<'a> {
    headend: &'a Subscriber,
    sim: &'a SimHandle,
    dir: &'a Path,
}

impl Run<'_> {
    async fn wait(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        self.headend
            .wait_until(PATIENCE, done)
            .await
            .unwrap_or_else(|| panic!("{what}: not seen in time\n{}", log_tail(self.dir, 60)))
    }

    fn change(&self, bus: &str, unit: u8, f: impl FnOnce(&mut MeterConditions)) {
        let mut c = self.sim.conditions(bus, unit).unwrap();
        f(&mut c);
        self.sim.set_conditions(bus, unit, c).unwrap();
    }

    /// Stages a condition, waits for the raise, lifts it, waits for the clear.
    async fn scenario(
        &self,
        kind: &str,
        subject: &str,
        stage: impl FnOnce(&Self),
        lift: impl FnOnce(&Self),
    ) -> (i64, i64) {
        stage(self);
        let staged = now_ms();
        self.wait(&format!("{kind}/{subject} raised"), |r| {
            has(r, kind, subject, "raised")
        })
        .await;
        lift(self);
        let lifted = now_ms();
        self.wait(&format!("{kind}/{subject} cleared"), |r| {
            has(r, kind, subject, "cleared")
        })
        .await;
        (staged, lifted)
    }

    /// `osc`: a voltage oscillating around the upper limit raises nothing; held, it raises
    /// once; oscillating inside the hysteresis band it stays raised; back to normal, it
    /// clears. Returns (end of the storm phase, start of the hold, start of the normal phase).
    async fn oscillation(&self) -> (i64, i64, i64) {
        let set = |v: Option<f64>| self.change("v", 3, |c| c.voltage_l1_v = v);
        // Violated (237 V > 235.4) / in the band (234.5 V: not below 233.4), 2 s each.
        for _ in 0..6 {
            set(Some(237.0));
            tokio::time::sleep(TOGGLE).await;
            set(Some(234.5));
            tokio::time::sleep(TOGGLE).await;
        }
        let storm_end = now_ms();
        set(Some(237.0));
        self.wait("voltage_high/osc.l1 raised by the held value", |r| {
            has(r, "voltage_high", "osc.l1", "raised")
        })
        .await;
        for _ in 0..3 {
            set(Some(234.5));
            tokio::time::sleep(TOGGLE).await;
            set(Some(237.0));
            tokio::time::sleep(TOGGLE).await;
        }
        set(None);
        let normal = now_ms();
        self.wait("voltage_high/osc.l1 cleared", |r| {
            has(r, "voltage_high", "osc.l1", "cleared")
        })
        .await;
        (storm_end, storm_end, normal)
    }

    /// `vq`: 4 s above the upper limit, 3 s below the lower one, then normal; returns the
    /// instants of the three changes.
    async fn voltage_profile(&self) -> [i64; 3] {
        let set = |v: Option<f64>| self.change("v", 5, |c| c.voltage_l1_v = v);
        set(Some(240.0));
        let up = now_ms();
        tokio::time::sleep(Duration::from_secs(4)).await;
        set(Some(190.0));
        let down = now_ms();
        tokio::time::sleep(Duration::from_secs(3)).await;
        set(None);
        let normal = now_ms();
        // A few normal reads after it.
        tokio::time::sleep(Duration::from_secs(3)).await;
        [up, down, normal]
    }
}

/// The condition began after it was staged and ended after it was lifted.
fn staged_then_lifted(r: &Value, c: &Value, (staged, lifted): (i64, i64)) {
    assert!(
        ts_field(r, "raised") >= staged - SLACK_MS,
        "raised before the staging at {}: {r}",
        rfc3339_ms(staged)
    );
    assert!(
        ts_field(c, "cleared") >= lifted - SLACK_MS,
        "cleared before the condition was lifted at {}: {c}",
        rfc3339_ms(lifted)
    );
}

/// The single raise and single clear of an alarm, checked for what every event carries.
fn raise_and_clear<'a>(
    received: &'a [Received],
    kind: &str,
    subject: &str,
    subject_kind: &str,
    severity: &str,
) -> (&'a Value, &'a Value) {
    let ev = events(received, kind, subject);
    assert_eq!(
        ev.len(),
        2,
        "{kind}/{subject}: exactly one raise and one clear expected, got {ev:#?}"
    );
    let (r, c) = (ev[0], ev[1]);
    assert_eq!(r["state"], "raised", "{r}");
    assert_eq!(c["state"], "cleared", "{c}");
    for e in [r, c] {
        assert_eq!(e["id"], format!("{kind}/{subject}"));
        assert_eq!(e["kind"], kind);
        assert_eq!(e["subject"], subject);
        assert_eq!(e["subject_kind"], subject_kind, "{e}");
        assert_eq!(e["severity"], severity, "{e}");
        assert!(e["seq"].as_u64().is_some());
        assert_eq!(e["raised"], r["raised"], "the onset does not move: {e}");
    }
    assert_eq!(r["cleared"], Value::Null);
    let raised = ts_field(r, "raised");
    let cleared = ts_field(c, "cleared");
    assert!(raised <= ts_field(r, "ts"), "{r}");
    assert!(raised < cleared && cleared <= ts_field(c, "ts"), "{c}");
    assert!(
        near(
            f(c, "duration_s"),
            (cleared - raised) as f64 / 1000.0,
            0.002
        ),
        "{c}"
    );
    assert_eq!(f(c, "raised_value"), f(r, "value"), "{c}");
    (r, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alarm_kind_raised_once_and_cleared_once() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let broker = Mosquitto::start();
    let headend = Subscriber::start(broker.port, "headend-alarms", "amr/gw/#").await;
    let sim_runtime = SimRuntime::new();
    let sim1_started = now_ms();
    let sim = sim_runtime.start(SIM_1, "sim-1.toml", dir);
    let sim2 = sim_runtime.start(SIM_2, "sim-2.toml", dir);
    let config = gateway_config(dir, broker.port);
    let mut gw = Gateway::start(&config, "gateway-1.log");
    let run = Run {
        headend: &headend,
        sim: &sim,
        dir,
    };
    let run2 = Run {
        headend: &headend,
        sim: &sim2,
        dir,
    };
    let replaced_ms = sim1_started + REPLACED_AT_S * 1000;

    // Every meter read a few times before anything is staged.
    run.wait("three readings of every meter", |r| {
        METERS.iter().all(|(id, ..)| {
            let topic = format!("amr/gw/reading/{id}");
            r.iter().filter(|(t, _)| *t == topic).count() >= 3
        })
    })
    .await;
    assert!(
        now_ms() < replaced_ms - 3_000,
        "the gateway took too long to start for the replacement scenario"
    );
    let t_staged = now_ms();
    run.change("v", 4, |c| c.swell = Some(1.1)); // `keep`: stands through the restarts

    let no_reply = Fault {
        no_reply: true,
        ..Fault::default()
    };
    let (
        offline,
        high,
        low,
        phase,
        unbalance,
        overload,
        reverse,
        stopped,
        fast,
        _,
        silent,
        outage,
        osc,
        vq,
    ) = tokio::join!(
        run.scenario(
            "meter_offline",
            "off",
            |r| r.sim.set_fault("r", 5, no_reply.clone()).unwrap(),
            |r| r.sim.set_fault("r", 5, Fault::default()).unwrap(),
        ),
        run.scenario(
            "voltage_high",
            "vh.l1",
            |r| r.change("v", 1, |c| c.swell = Some(1.1)),
            |r| r.change("v", 1, |c| c.swell = None),
        ),
        run.scenario(
            "voltage_low",
            "vl.l1",
            |r| r.change("v", 2, |c| c.sag = Some(0.8)),
            |r| r.change("v", 2, |c| c.sag = None),
        ),
        run.scenario(
            "phase_loss",
            "pl.l2",
            |r| r.change("p", 1, |c| c.phase_loss = Some(Phase::L2)),
            |r| r.change("p", 1, |c| c.phase_loss = None),
        ),
        run.scenario(
            "current_unbalance",
            "ub",
            |r| r.change("p", 2, |c| c.unbalance = Some([1.0, 0.5, 0.2])),
            |r| r.change("p", 2, |c| c.unbalance = None),
        ),
        run.scenario(
            "overload",
            "ov",
            |r| r.change("ov-bus", 2, |c| c.load_kw = 9.0),
            |r| r.change("ov-bus", 2, |c| c.load_kw = 3.0),
        ),
        run.scenario(
            "reverse_energy",
            "rev",
            |r| r.change("r", 1, |c| c.reversed = true),
            |r| r.change("r", 1, |c| c.reversed = false),
        ),
        run.scenario(
            "meter_stopped",
            "stop",
            |r| r.change("r", 2, |c| c.stopped = true),
            |r| r.change("r", 2, |c| c.stopped = false),
        ),
        run.scenario(
            "running_fast",
            "fast",
            |r| r.change("r", 3, |c| c.register_scale = 3.0),
            |r| r.change("r", 3, |c| c.register_scale = 1.0),
        ),
        run.wait("reading_down/repl raised and cleared", |r| {
            has(r, "reading_down", "repl", "cleared")
        }),
        run.scenario(
            "area_outage",
            "s",
            |r| r.sim.set_bus_silent("s", true).unwrap(),
            |r| r.sim.set_bus_silent("s", false).unwrap(),
        ),
        run2.scenario(
            "area_outage",
            "out",
            |r| r.change("out-bus", 1, |c| c.voltage_lost = true),
            |r| r.change("out-bus", 1, |c| c.voltage_lost = false),
        ),
        run.oscillation(),
        run.voltage_profile(),
    );
    // Everything that raised has cleared: only `keep` stands. Give a silent-bus meter that
    // came back late the chance to (wrongly) raise meter_offline before checking.
    run.wait("keep raised", |r| {
        has(r, "voltage_high", "keep.l1", "raised")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;

    // ---- Restart 1: a clean stop longer than min_down_s → one power_off event.
    let stopping = now_ms();
    assert!(
        gw.terminate().success(),
        "SIGTERM should end the gateway cleanly\n{}",
        log_tail(dir, 40)
    );
    let stopped_at = now_ms();
    let vq_store = voltage_quality_from_store(&config);
    tokio::time::sleep(Duration::from_millis(
        (MIN_DOWN_S as u64 + 2) * 1000 - (now_ms() - stopped_at).max(0) as u64,
    ))
    .await;
    let restarted = now_ms();
    let mut gw = Gateway::start(&config, "gateway-2.log");
    run.wait("power_off reported after the restart", |r| {
        has(r, "power_off", "gw", "cleared")
    })
    .await;
    // A headend connecting now gets the standing set, retained.
    let late = Subscriber::start(broker.port, "late-headend", "amr/gw/alarm/active").await;
    let active = late
        .wait_until(PATIENCE, |r| !r.is_empty())
        .await
        .expect("the retained alarm/active");
    let active = &active.last().unwrap().1;
    let ids: Vec<&str> = active["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["voltage_high/keep.l1"], "{active}");
    assert_eq!(active["count"], 1);
    assert_eq!(
        active["alarms"][0]["raised"],
        events(&headend.received(), "voltage_high", "keep.l1")[0]["raised"]
    );

    // ---- Restart 2: SIGKILL and start again at once: no power_off, keep not raised again.
    run.wait("readings after the restart", |r| {
        r.iter()
            .any(|(t, j)| t == "amr/gw/reading/keep" && ts_field(j, "ts") > restarted + 3_000)
    })
    .await;
    gw.kill();
    let killed = now_ms();
    let _gw = Gateway::start(&config, "gateway-3.log");
    // Long enough for a re-raise to happen if the standing alarm had been forgotten.
    run.wait(
        "keep read for longer than the raise hold after the kill",
        |r| {
            r.iter().any(|(t, j)| {
                t == "amr/gw/reading/keep"
                    && ts_field(j, "ts") > killed + (VOLTAGE_RAISE_S + 3) * 1000
            })
        },
    )
    .await;
    run.change("v", 4, |c| c.swell = None);
    let keep_lifted = now_ms();
    let received = run
        .wait("keep cleared", |r| {
            has(r, "voltage_high", "keep.l1", "cleared")
        })
        .await;

    // ======== What the headend saw.
    let unexpected: BTreeSet<String> = received
        .iter()
        .filter_map(|(t, _)| t.strip_prefix("amr/gw/alarm/"))
        .filter(|t| *t != "active")
        .map(str::to_string)
        .collect();
    let expected: BTreeSet<String> = [
        "meter_offline/off",
        "voltage_high/vh.l1",
        "voltage_low/vl.l1",
        "voltage_high/osc.l1",
        "voltage_high/keep.l1",
        "phase_loss/pl.l2",
        "current_unbalance/pl", // l2's current is gone with its voltage: 100 % unbalance
        "current_unbalance/ub",
        "overload/ov",
        "reverse_energy/rev",
        "meter_stopped/stop",
        "running_fast/fast",
        "reading_down/repl",
        "area_outage/s",
        "area_outage/out",
        "power_off/gw",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(
        unexpected, expected,
        "alarm topics seen (left) vs staged (right)"
    );

    // meter_offline: value = s since the last good poll, threshold = the hold.
    let (r, c) = raise_and_clear(&received, "meter_offline", "off", "meter", "major");
    assert_eq!(f(r, "threshold"), 6.0);
    assert!(f(r, "value") >= 6.0, "{r}");
    assert_eq!(r["meter"], "off");
    assert_eq!(r["bus"], "r");
    assert_eq!(r["erc"], 31);
    assert!(r["consecutive_failures"].as_u64().unwrap() >= 3, "{r}");
    let last_ok = ts_field(r, "last_ok");
    assert!(
        last_ok <= offline.0 + 1_000 && last_ok > offline.0 - 3_000,
        "{r}"
    );
    assert!(ts_field(c, "cleared") >= offline.1 - SLACK_MS, "{c}");
    // A meter that stops answering is not mistaken for one that rejects large blocks.
    for log in ["gateway-1.log", "gateway-2.log", "gateway-3.log"] {
        let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
        assert!(!text.contains("narrowing"), "{log}:\n{text}");
    }

    // voltage_high / voltage_low: per phase, V against the GB/T 12325 limits of 220 V.
    let (r, c) = raise_and_clear(&received, "voltage_high", "vh.l1", "meter", "minor");
    assert!(near(f(r, "value"), 253.0, 0.05), "{r}");
    assert!(near(f(r, "threshold"), 235.4, 1e-6), "{r}");
    assert_eq!(r["meter"], "vh");
    assert_eq!(r["phase"], "l1");
    assert_eq!(f(r, "voltage_v"), f(r, "value"));
    assert_eq!(f(r, "limit_pct"), 7.0);
    assert_eq!(r["erc"], 24);
    assert!(
        ts_field(r, "ts") - ts_field(r, "raised") >= VOLTAGE_RAISE_S * 1000 - 50,
        "held: {r}"
    );
    assert!(ts_field(r, "raised") >= high.0 - SLACK_MS, "{r}");
    assert!(near(f(c, "value"), 230.0, 0.05), "{c}");
    assert!(ts_field(c, "cleared") >= high.1 - SLACK_MS, "{c}");
    let (r, c) = raise_and_clear(&received, "voltage_low", "vl.l1", "meter", "minor");
    assert!(near(f(r, "value"), 184.0, 0.05), "{r}");
    assert!(near(f(r, "threshold"), 198.0, 1e-6), "{r}");
    assert_eq!(f(r, "limit_pct"), -10.0);
    staged_then_lifted(r, c, low);

    // phase_loss: the absent phase at 0 V against 60 % of 220 V; the others present.
    let (r, c) = raise_and_clear(&received, "phase_loss", "pl.l2", "meter", "major");
    assert_eq!(f(r, "value"), 0.0, "{r}");
    assert!(near(f(r, "threshold"), 132.0, 1e-6), "{r}");
    assert_eq!(r["phase"], "l2");
    assert_eq!(f(&r["voltages_v"], "l2"), 0.0, "{r}");
    assert!(
        f(&r["voltages_v"], "l1") > 200.0 && f(&r["voltages_v"], "l3") > 200.0,
        "{r}"
    );
    assert_eq!(r["erc"], 10);
    staged_then_lifted(r, c, phase);
    assert!(f(c, "value") > 200.0, "{c}");
    // ... and no voltage_low for that phase (checked by the set of topics above).
    let (r, _) = raise_and_clear(&received, "current_unbalance", "pl", "meter", "minor");
    assert!(near(f(r, "value"), 100.0, 0.01), "{r}");

    // current_unbalance: (max − min) / max of the phase currents.
    let (r, c) = raise_and_clear(&received, "current_unbalance", "ub", "meter", "minor");
    assert!(near(f(r, "value"), 80.0, 0.5), "{r}");
    assert_eq!(f(r, "threshold"), 30.0);
    let (max_a, min_a) = (f(r, "max_a"), f(r, "min_a"));
    assert!(
        near((max_a - min_a) / max_a * 100.0, f(r, "value"), 0.01),
        "{r}"
    );
    assert!(
        near(f(&r["currents_a"], "l1"), max_a, 1e-9)
            && near(f(&r["currents_a"], "l3"), min_a, 1e-9),
        "{r}"
    );
    assert_eq!(r["erc"], 17);
    staged_then_lifted(r, c, unbalance);
    assert!(f(c, "value") < 25.0, "{c}");

    // overload: the supply meter's kVA (kW / pf) against the rated 10 kVA.
    let (r, c) = raise_and_clear(&received, "overload", "ov", "area", "major");
    assert!(near(f(r, "value"), 12.0 / 0.95, 0.15), "{r}");
    assert_eq!(f(r, "threshold"), 10.0);
    assert_eq!(f(r, "rated_kva"), 10.0);
    assert!(near(f(r, "load_pct"), f(r, "value") * 10.0, 0.01), "{r}");
    assert!(near(f(r, "power_kw"), 12.0, 0.1), "{r}");
    assert_eq!(r["supply"], json!(["ov-s"]));
    staged_then_lifted(r, c, overload);
    assert!(near(f(c, "value"), 6.0 / 0.95, 0.1), "{c}");

    // reverse_energy: kWh exported in the run, against min_increase_kwh.
    let (r, c) = raise_and_clear(&received, "reverse_energy", "rev", "meter", "major");
    assert_eq!(f(r, "threshold"), 0.01);
    // Raised on the first read past 0.01 kWh: 6 kW for at most ~1.5 s more.
    assert!(f(r, "value") > 0.01 && f(r, "value") < 0.01 + 0.0025, "{r}");
    assert_eq!(f(r, "increase_kwh"), f(r, "value"));
    assert!(f(r, "energy_export_kwh") >= f(r, "value"), "{r}");
    staged_then_lifted(r, c, reverse);

    // meter_stopped: seconds the register stood still while current flowed.
    let (r, c) = raise_and_clear(&received, "meter_stopped", "stop", "meter", "major");
    assert_eq!(f(r, "threshold"), 4.0);
    assert!(f(r, "value") >= 4.0 && f(r, "value") < 8.0, "{r}");
    assert!(near(f(r, "current_a"), 2000.0 / 230.0 / 0.95, 0.1), "{r}");
    assert_eq!(r["erc"], 30);
    // `unchanged_since` is the read that last saw the register move: the first read after the
    // stop (it still carries the movement between the read before and the stop). When that read
    // comes depends on the bus, not on the engine: here another meter on bus `r` (`off`) stops
    // answering at the same moment, and its timeouts (500 ms, and the line drained as long
    // again) can stand between the stop and `stop`'s next read, so `unchanged_since` can be
    // seconds after the stop. What is checked: it is one of `stop`'s reads, the read before it
    // was taken before the stop (at most 1.5 s before), and every read from it to the raise
    // shows the same register.
    let still = ts_field(r, "unchanged_since");
    let mut reads: Vec<(i64, f64)> = received
        .iter()
        .filter(|(t, _)| t.as_str() == "amr/gw/reading/stop")
        .map(|(_, m)| (ts_field(m, "ts"), f(&m["values"], "energy_import_kwh")))
        .collect();
    reads.sort_by_key(|(ts, _)| *ts);
    let at = reads
        .iter()
        .position(|(ts, _)| *ts == still)
        .unwrap_or_else(|| panic!("unchanged_since is no read of `stop`: {r}\n{reads:?}"));
    assert!(at > 0, "{r}");
    let before = reads[at - 1].0;
    assert!(
        before <= stopped.0 && before >= stopped.0 - 1_500,
        "the read before unchanged_since ({before}) vs the stop ({}): {r}",
        stopped.0
    );
    let raised_at = ts_field(r, "ts");
    assert!(
        reads[at..]
            .iter()
            .take_while(|(ts, _)| *ts <= raised_at)
            .all(|(_, e)| *e == reads[at].1),
        "the register moved after unchanged_since: {r}\n{reads:?}"
    );
    assert!(ts_field(c, "cleared") >= stopped.1 - SLACK_MS, "{c}");

    // running_fast: the implied kW against rated × (1 + margin).
    let (r, c) = raise_and_clear(&received, "running_fast", "fast", "meter", "major");
    assert!(near(f(r, "threshold"), 3.6, 1e-9), "{r}");
    // The first read after the staging may span it: between the limit and 3 × 2 kW.
    assert!(f(r, "value") > 3.6 && f(r, "value") < 6.0 * 1.05, "{r}");
    assert!(
        near(
            f(r, "increment_kwh") / f(r, "interval_s") * 3600.0,
            f(r, "value"),
            0.01
        ),
        "{r}"
    );
    assert_eq!(f(r, "rated_kw"), 3.0);
    assert_eq!(r["erc"], 29);
    staged_then_lifted(r, c, fast);

    // reading_down: the replaced meter's register fell by what it had counted.
    let (r, c) = raise_and_clear(&received, "reading_down", "repl", "meter", "major");
    assert_eq!(f(r, "threshold"), 0.01);
    assert_eq!(r["register"], "energy_import_kwh");
    let drop = f(r, "previous_kwh") - f(r, "current_kwh");
    assert!(near(f(r, "value"), drop, 1e-5), "{r}");
    assert!(
        f(r, "previous_kwh") > REPL_START_KWH && f(r, "current_kwh") < 0.01,
        "{r}"
    );
    assert_eq!(r["erc"], 27);
    let raised = ts_field(r, "raised");
    assert!(
        raised >= replaced_ms - 100 && raised < replaced_ms + 3_000,
        "{r}"
    );
    // Cleared at the onset of normality (the next read), decided clear_after_s later.
    assert!(
        ts_field(c, "ts") - ts_field(c, "cleared") >= 5_000 - 50,
        "{c}"
    );
    assert_eq!(f(c, "value"), 0.0, "{c}");

    // area_outage of a silent bus: one alarm for the bus, none per meter.
    let (r, c) = raise_and_clear(&received, "area_outage", "s", "bus", "critical");
    assert_eq!(r["cause"], "bus_silent");
    assert_eq!(f(r, "value"), 3.0);
    assert_eq!(f(r, "threshold"), 3.0);
    assert_eq!(r["meters"], json!(["s1", "s2", "s3"]));
    staged_then_lifted(r, c, silent);
    assert!(ts_field(r, "last_heard") <= silent.0 + 1_000, "{r}");
    for m in ["s1", "s2", "s3"] {
        assert!(events(&received, "meter_offline", m).is_empty());
    }

    // area_outage of a lost supply voltage: the area's highest supply phase voltage.
    let (r, c) = raise_and_clear(&received, "area_outage", "out", "area", "critical");
    assert_eq!(r["cause"], "supply_voltage_lost");
    assert_eq!(f(r, "value"), 0.0, "{r}");
    assert!(near(f(r, "threshold"), 110.0, 1e-6), "{r}");
    assert_eq!(r["supply"], json!(["out-s"]));
    staged_then_lifted(r, c, outage);
    assert!(f(c, "value") > 200.0, "{c}");
    assert!(f(c, "duration_s") > 0.0, "{c}");

    // No storm: nothing while oscillating, one raise once held, no clear while it wobbles
    // inside the hysteresis band, one clear when normal.
    let (storm_end, hold_from, normal) = osc;
    let (r, c) = raise_and_clear(&received, "voltage_high", "osc.l1", "meter", "minor");
    assert!(
        ts_field(r, "raised") >= hold_from - 1_000,
        "raised during the storm: {r}"
    );
    assert!(ts_field(r, "ts") > storm_end, "{r}");
    assert!(near(f(r, "value"), 237.0, 0.01), "{r}");
    assert!(
        ts_field(c, "cleared") >= normal,
        "cleared while in the band: {c}"
    );
    assert!(near(f(c, "value"), 230.0, 0.05), "{c}");

    // power_off: one complete event for the clean stop, none for the quick kill.
    let (r, c) = raise_and_clear(&received, "power_off", "gw", "gateway", "info");
    let (from, to) = (ts_field(r, "down_from"), ts_field(r, "down_to"));
    assert_eq!(r["down_from"], c["down_from"]);
    assert_eq!(r["down_to"], c["down_to"]);
    assert_eq!(ts_field(r, "raised"), from);
    assert_eq!(ts_field(c, "cleared"), to);
    assert!(
        from >= stopping - 11_000 && from <= stopped_at,
        "down_from {}: {r}",
        rfc3339_ms(from)
    );
    assert!(
        to >= restarted && to < restarted + 30_000,
        "down_to {}: {r}",
        rfc3339_ms(to)
    );
    assert!(
        near(f(r, "value"), (to - from) as f64 / 1000.0, 0.002),
        "{r}"
    );
    assert!(f(r, "value") >= MIN_DOWN_S as f64);
    assert_eq!(f(r, "threshold"), MIN_DOWN_S as f64);
    assert_eq!(r["erc"], 14);

    // The standing alarm: raised once before the restarts, cleared once after.
    let (r, c) = raise_and_clear(&received, "voltage_high", "keep.l1", "meter", "minor");
    assert!(
        ts_field(r, "ts") < stopping && ts_field(r, "raised") >= t_staged,
        "{r}"
    );
    assert!(ts_field(c, "cleared") >= keep_lifted, "{c}");
    // The last retained active set is empty again.
    let last_active = received
        .iter()
        .rev()
        .find(|(t, _)| t == "amr/gw/alarm/active")
        .map(|(_, j)| j.clone())
        .unwrap();
    assert_eq!(last_active["count"], 0, "{last_active}");

    // ---- Voltage quality of `vq`, from the store after the clean stop.
    check_voltage_quality(&vq_store, vq);
}

/// The `vq` l1 figures of the voltage-quality snapshot the gateway left in its store, and the
/// meter's stored reads.
struct VoltageFromStore {
    monitored_ms: i64,
    above_ms: i64,
    below_ms: i64,
    min_v: Option<f64>,
    max_v: Option<f64>,
    /// (ts ms, V) of every stored read.
    reads: Vec<(i64, f64)>,
}

fn voltage_quality_from_store(config: &Path) -> VoltageFromStore {
    let cfg = amr_gateway::config::load(config).unwrap();
    let store = Store::open(&cfg.db_path(), &cfg.store).unwrap();
    let snapshot: VoltageSnapshot = serde_json::from_str(
        &store
            .meta(&MetaKey::VoltageEngine)
            .unwrap()
            .expect("a voltage snapshot"),
    )
    .unwrap();
    // Each meter's series are kept under a key of their own (`analytics/voltage/meter/{id}`).
    let mut all = snapshot.series;
    for (_, part) in store.engine_meters(&MetaKey::VoltageEngine).unwrap() {
        all.extend(serde_json::from_str::<Vec<_>>(&part).unwrap_or_default());
    }
    let series = all
        .iter()
        .find(|s| s.meter == "vq" && s.phase == "l1")
        .expect("vq l1 in the snapshot");
    let mut out = VoltageFromStore {
        monitored_ms: 0,
        above_ms: 0,
        below_ms: 0,
        min_v: None,
        max_v: None,
        reads: Vec::new(),
    };
    for d in &series.days {
        out.monitored_ms += d.monitored_ms;
        out.above_ms += d.above_ms;
        out.below_ms += d.below_ms;
        out.min_v = d.min_v.into_iter().chain(out.min_v).reduce(f64::min);
        out.max_v = d.max_v.into_iter().chain(out.max_v).reduce(f64::max);
    }
    out.reads = store
        .history("vq", 0, i64::MAX)
        .unwrap()
        .into_iter()
        .filter_map(|r| r.values.get("voltage_l1_v").map(|v| (r.ts_ms, *v)))
        .collect();
    assert_eq!(
        series.last.map(|l| l.0),
        out.reads.last().map(|r| r.0),
        "the snapshot has seen every stored read"
    );
    out
}

/// Figures by hand: each interval between two reads is attributed to the first read's
/// voltage; above 235.4 V is over the limit, below 198 V under it.
fn check_voltage_quality(got: &VoltageFromStore, script: [i64; 3]) {
    let (upper, lower) = (220.0 * 1.07, 220.0 * 0.9);
    let (mut monitored, mut above, mut below) = (0, 0, 0);
    for w in got.reads.windows(2) {
        let ((t0, v0), (t1, _)) = (w[0], w[1]);
        monitored += t1 - t0;
        if v0 > upper {
            above += t1 - t0;
        } else if v0 < lower {
            below += t1 - t0;
        }
    }
    println!(
        "voltage quality vq.l1: monitored {} s, above {} s, below {} s (store) vs {} / {} / {} s (hand)",
        got.monitored_ms as f64 / 1000.0,
        got.above_ms as f64 / 1000.0,
        got.below_ms as f64 / 1000.0,
        monitored as f64 / 1000.0,
        above as f64 / 1000.0,
        below as f64 / 1000.0
    );
    assert_eq!(got.monitored_ms, monitored);
    assert_eq!(got.above_ms, above);
    assert_eq!(got.below_ms, below);
    assert_eq!(got.max_v, Some(240.0));
    assert_eq!(got.min_v, Some(190.0));
    // Against the script: 4 s above, 3 s below, each within about one poll period.
    let [up, down, normal] = script;
    let scripted_above = down - up;
    let scripted_below = normal - down;
    assert!(
        (above - scripted_above).abs() <= 1_500,
        "above {above} ms, scripted {scripted_above} ms"
    );
    assert!(
        (below - scripted_below).abs() <= 1_500,
        "below {below} ms, scripted {scripted_below} ms"
    );
    let first = got.reads.first().unwrap().0;
    let last = got.reads.last().unwrap().0;
    assert_eq!(monitored, last - first, "every 1-s gap is monitored time");
    let qualified = (1.0 - (above + below) as f64 / monitored as f64) * 100.0;
    println!("vq.l1 qualified {qualified:.3} %");
}
