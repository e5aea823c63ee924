//! `amr-gateway demo`: a simulated area, an embedded MQTT broker on 127.0.0.1 and the gateway,
//! with a live summary — nothing to install or configure.
//!
//! The utility's day shows within the first minutes without compressing time: the demo's
//! gateway counts its days in a fixed-offset zone of its own ([`demo_zone`]) whose local
//! midnight comes [`MIDNIGHT_AFTER_S`] seconds after the start, so the daily freeze of every
//! meter, one-minute load-curve blocks and, at `[collection] report_at = "00:01"`, the day's
//! collection report come while one watches; the days themselves stay real 24-hour days.

use crate::clock::{self, LocalTime};
use crate::config;
use crate::gateway::{self, GatewayState};
use crate::meter::ModelLibrary;
use crate::sim;
use std::time::Duration;
use tokio::sync::watch;

const SIM_TEMPLATE: &str = include_str!("../config/demo-sim.toml");
const GATEWAY_TEMPLATE: &str = include_str!("../config/demo.toml");

/// Seconds from the start of the demo to the local midnight of its gateway's zone.
pub const MIDNIGHT_AFTER_S: i64 = 15;

/// `[collection] report_at` of config/demo.toml, seconds after local midnight.
const REPORT_AFTER_MIDNIGHT_S: i64 = 60;

/// The demo gateway's zone: a fixed offset from UTC, to the second, that puts local midnight
/// `midnight_after_s` seconds after `now_ms` (within the next second), named after its offset
/// (`demo UTC+05:17:42`). Its days are 24 hours like any day; only where they start differs.
pub fn demo_zone(now_ms: i64, midnight_after_s: i64) -> LocalTime {
    const DAY_S: i64 = 86_400;
    let since_utc_midnight_s = now_ms.div_euclid(1000).rem_euclid(DAY_S);
    // Local time at `now_ms` is to be 24:00 less `midnight_after_s`.
    let mut offset = (DAY_S - midnight_after_s - since_utc_midnight_s).rem_euclid(DAY_S);
    if offset > DAY_S / 2 {
        offset -= DAY_S;
    }
    let (sign, a) = if offset < 0 {
        ('-', -offset)
    } else {
        ('+', offset)
    };
    let name = format!(
        "demo UTC{sign}{:02}:{:02}:{:02}",
        a / 3600,
        a / 60 % 60,
        a % 60
    );
    LocalTime::fixed_offset(offset as i32, &name).expect("within ±12 h")
}

/// One staged event of the demo's script: at `at_s` seconds, do something to the simulator.
struct Stage {
    at_s: u64,
    what: &'static str,
    act: fn(&sim::SimHandle) -> Result<(), sim::SimError>,
}

/// The demo's script: a voltage sag, a theft at h12, and a meter that stops answering. Each
/// raises an alarm or shows in the loss; the sag and the silent meter clear again.
const SCRIPT: &[Stage] = &[
    Stage {
        at_s: 15,
        what: "voltage sag at h13 (to about 196 V, below the 198 V limit)",
        act: |sim| {
            let mut c = sim.conditions("dlt645-1", 13)?;
            c.sag = Some(0.85);
            sim.set_conditions("dlt645-1", 13, c)
        },
    },
    Stage {
        at_s: 60,
        what: "voltage at h13 back to normal",
        act: |sim| {
            let mut c = sim.conditions("dlt645-1", 13)?;
            c.sag = None;
            sim.set_conditions("dlt645-1", 13, c)
        },
    },
    Stage {
        at_s: 90,
        what: "h12 bypasses 60 % of its load (theft): the loss rises, h12 is named a suspect",
        act: |sim| {
            let mut c = sim.conditions("dlt645-1", 12)?;
            c.theft_fraction = 0.6;
            c.theft_from_s = 0.0;
            sim.set_conditions("dlt645-1", 12, c)
        },
    },
    Stage {
        at_s: 180,
        what: "meter h23 stops answering",
        act: |sim| {
            let mut f = sim.fault("dlt645-2", 23)?;
            f.no_reply = true;
            sim.set_fault("dlt645-2", 23, f)
        },
    },
    Stage {
        at_s: 230,
        what: "meter h23 answers again",
        act: |sim| {
            let mut f = sim.fault("dlt645-2", 23)?;
            f.no_reply = false;
            sim.set_fault("dlt645-2", 23, f)
        },
    },
];

/// Runs the demo until `shutdown` or for `for_s` seconds.
pub async fn run(
    for_s: Option<u64>,
    mqtt_port: u16,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("amr-gateway-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let fill = |t: &str| {
        t.replace("@DIR@", &dir.display().to_string())
            .replace("@PORT@", &mqtt_port.to_string())
    };
    let sim_path = dir.join("demo-sim.toml");
    let gw_path = dir.join("demo.toml");
    std::fs::write(&sim_path, fill(SIM_TEMPLATE)).map_err(|e| e.to_string())?;
    std::fs::write(&gw_path, fill(GATEWAY_TEMPLATE)).map_err(|e| e.to_string())?;

    let broker =
        crate::broker::Broker::bind(std::net::SocketAddr::from(([127, 0, 0, 1], mqtt_port)))
            .await
            .map_err(|e| {
                format!("cannot listen on 127.0.0.1:{mqtt_port}: {e} (try --mqtt-port)")
            })?;
    let (broker_stop_tx, broker_stop_rx) = watch::channel(false);
    let broker_task = tokio::spawn(broker.run(broker_stop_rx.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);

    let sim_cfg = sim::SimConfig::load(&sim_path).map_err(|e| e.to_string())?;
    let sim = sim::start(sim_cfg, &ModelLibrary::builtin()).map_err(|e| e.to_string())?;

    let mut cfg = config::load(&gw_path).map_err(|e| e.to_string())?;
    let zone = demo_zone(clock::now_ms(), MIDNIGHT_AFTER_S);
    cfg.gateway.timezone = zone.clone();
    println!("amr-gateway demo");
    println!(
        "  simulated area T1: {} meters on {} RS-485 buses (pseudo-terminals in {})",
        cfg.meters.len(),
        cfg.buses.len(),
        dir.display()
    );
    println!(
        "  supply and shop meters on Modbus RTU; {} households on DL/T 645-2007",
        cfg.buses
            .iter()
            .filter(|b| b.protocol == config::BusProtocol::Dlt645)
            .map(|b| cfg.meters_on(&b.name).count())
            .sum::<usize>()
    );
    println!("  embedded MQTT broker: 127.0.0.1:{mqtt_port}");
    println!("  watch it: mosquitto_sub -h 127.0.0.1 -p {mqtt_port} -t 'amr/#' -v");
    println!(
        "  line loss per 60 s interval; staged: a voltage sag (15 s), a theft (90 s), a silent meter (180 s)"
    );
    println!(
        "  its days are local days of its own zone, {}: midnight in {MIDNIGHT_AFTER_S} s (the daily \
         freeze of every meter), a load-curve block every minute (shown for the supply meter), the \
         day's collection report at 00:01 ({} s); times below are local",
        zone.name(),
        MIDNIGHT_AFTER_S + REPORT_AFTER_MIDNIGHT_S
    );
    let report_s = MIDNIGHT_AFTER_S + REPORT_AFTER_MIDNIGHT_S;
    if let Some(s) = for_s.filter(|s| (*s as i64) < report_s + 5) {
        let freeze = if (s as i64) < MIDNIGHT_AFTER_S + 5 {
            format!("the freeze (about {MIDNIGHT_AFTER_S} s in) and ")
        } else {
            String::new()
        };
        println!(
            "  --for {s} ends before {freeze}the collection report (about {report_s} s in): \
             run with --for {} to see them",
            report_s + 15
        );
    }
    println!();
    let (live_tx, live_rx) = watch::channel(GatewayState::default());
    let gw = tokio::spawn(gateway::run(cfg, stop_rx.clone().into(), Some(live_tx)));
    let headend = tokio::spawn(print_events(mqtt_port, zone, broker_stop_rx));

    let started = tokio::time::Instant::now();
    let deadline = for_s.map(|s| started + Duration::from_secs(s));
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut script = SCRIPT.iter().peekable();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
        }
        let elapsed = started.elapsed();
        while let Some(stage) = script.next_if(|s| elapsed.as_secs() >= s.at_s) {
            println!("[{:>4} s] staged: {}", elapsed.as_secs(), stage.what);
            if let Err(e) = (stage.act)(&sim) {
                eprintln!("demo: could not stage it: {e}");
            }
        }
        let s = live_rx.borrow().clone();
        println!("{}", summary_line(elapsed, &s));
    }
    // The gateway first (it says goodbye to the broker), then the broker.
    let _ = stop_tx.send(true);
    let _ = gw.await;
    let _ = broker_stop_tx.send(true);
    let _ = headend.await;
    let _ = broker_task.await;
    drop(sim);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A headend of its own: subscribes to the demo's broker and prints every closed loss interval,
/// every alarm event, every freeze, the collection report and daily loss, and the supply
/// meter's load-curve blocks as they arrive.
async fn print_events(port: u16, zone: LocalTime, mut stop: watch::Receiver<bool>) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new("amr-gateway-demo-headend", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 64);
    let _ = client
        .subscribe("amr/demo-gw/loss/#", QoS::AtLeastOnce)
        .await;
    for topic in [
        "amr/demo-gw/alarm/+/+",
        "amr/demo-gw/freeze/+",
        "amr/demo-gw/collection",
        "amr/demo-gw/curve/supply",
    ] {
        let _ = client.subscribe(topic, QoS::AtLeastOnce).await;
    }
    loop {
        let ev = tokio::select! {
            ev = events.poll() => ev,
            _ = stop.changed() => break,
        };
        match ev {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&p.payload)
                    && let Some(line) = event_line(&p.topic, &json, &zone)
                {
                    println!("{line}");
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// `HH:MM:SS` of local time in `zone` for an RFC 3339 UTC timestamp (as it came, when it is not
/// one).
fn local_hms(zone: &LocalTime, t: &str) -> String {
    match clock::parse_rfc3339(t) {
        Some(ts) => {
            let s = zone.since_midnight_ms(ts) / 1000;
            format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
        }
        None => t.to_string(),
    }
}

/// `name 1.234` for the numbers of a payload object, in order, those named in `keys` only.
fn figures(o: &serde_json::Value, keys: &[(&str, &str)]) -> String {
    keys.iter()
        .filter_map(|(k, unit)| o[*k].as_f64().map(|v| format!("{k} {v:.2}{unit}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `rs485-1 2/2` for each group of a collection report (`kind`: `bus` or `area`).
fn groups(j: &serde_json::Value, list: &str, kind: &str) -> String {
    j[list]
        .as_array()
        .map(|gs| {
            gs.iter()
                .map(|g| {
                    format!(
                        "{} {}/{}",
                        g[kind].as_str().unwrap_or("?"),
                        g["frozen"],
                        g["configured"]
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// A human line for a loss record, an alarm event, a freeze, a collection report, a daily loss
/// or a load-curve block (None for anything else); times local in `zone`.
pub fn event_line(topic: &str, j: &serde_json::Value, zone: &LocalTime) -> Option<String> {
    let time = |k: &str| {
        j[k].as_str()
            .map(|t| local_hms(zone, t))
            .unwrap_or_default()
    };
    let names = |k: &str| match j[k].as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|m| m.as_str().unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "none".to_string(),
    };
    if topic.contains("/freeze/") {
        return Some(format!(
            "         FREEZE {} {} {} {}: {} ({}{})",
            j["kind"].as_str().unwrap_or("?"),
            j["day"].as_str().unwrap_or("?"),
            time("ts"),
            j["meter"].as_str().unwrap_or("?"),
            figures(
                &j["values"],
                &[("energy_import_kwh", " kWh"), ("energy_export_kwh", " kWh")]
            ),
            j["source"].as_str().unwrap_or("?"),
            if j["late"] == serde_json::json!(true) {
                ", late"
            } else {
                ""
            }
        ));
    }
    if topic.ends_with("/collection") {
        return Some(format!(
            "         COLLECTION {}: {} of {} meters with a daily freeze ({} %), failed: {} | buses {} | areas {}",
            j["day"].as_str().unwrap_or("?"),
            j["frozen"],
            j["configured"],
            j["rate_pct"]
                .as_f64()
                .map(|p| format!("{p:.1}"))
                .unwrap_or("-".into()),
            names("failed"),
            groups(j, "buses", "bus"),
            groups(j, "areas", "area"),
        ));
    }
    if topic.contains("/curve/") {
        let points = j["points"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let last = points.last();
        return Some(format!(
            "         curve {} {}–{}: {} point(s){}",
            j["meter"].as_str().unwrap_or("?"),
            time("start"),
            time("end"),
            points.len(),
            last.map(|p| format!(
                ", at {}: {}; {}",
                p["ts"]
                    .as_str()
                    .map(|t| local_hms(zone, t))
                    .unwrap_or_default(),
                figures(&p["energy"], &[("energy_import_kwh", " kWh")]),
                figures(
                    &p["instant"],
                    &[("power_kw", " kW"), ("voltage_l1_v", " V")]
                )
            ))
            .unwrap_or_default()
        ));
    }
    if topic.contains("/loss/") && topic.ends_with("/day") {
        return Some(format!(
            "         DAILY LOSS {} {}: supply {:.2} kWh, sales {:.2} kWh, loss {:.2} kWh = {} %{}",
            j["area"].as_str().unwrap_or("?"),
            j["day"].as_str().unwrap_or("?"),
            j["supply_kwh"].as_f64().unwrap_or(0.0),
            j["sales_kwh"].as_f64().unwrap_or(0.0),
            j["loss_kwh"].as_f64().unwrap_or(0.0),
            j["loss_pct"]
                .as_f64()
                .map(|p| format!("{p:.1}"))
                .unwrap_or("-".into()),
            if j["complete"] == serde_json::json!(false) {
                format!(" (incomplete, missing: {})", names("missing"))
            } else {
                String::new()
            }
        ));
    }
    if topic.contains("/loss/") {
        let mut line = format!(
            "         loss {} {}–{}: supply {:.3} kWh, sales {:.3} kWh, loss {:.3} kWh = {} %{}",
            j["area"].as_str().unwrap_or("?"),
            time("start"),
            time("end"),
            j["supply_kwh"].as_f64().unwrap_or(0.0),
            j["sales_kwh"].as_f64().unwrap_or(0.0),
            j["loss_kwh"].as_f64().unwrap_or(0.0),
            j["loss_pct"]
                .as_f64()
                .map(|p| format!("{p:.1}"))
                .unwrap_or("-".into()),
            if j["complete"] == serde_json::json!(false) {
                format!(" (incomplete, coverage {} %)", j["coverage_pct"])
            } else {
                String::new()
            }
        );
        if let Some(s) = j["suspects"].as_array().filter(|s| !s.is_empty()) {
            let names: Vec<String> = s
                .iter()
                .map(|x| {
                    format!(
                        "{} (score {:.1})",
                        x["meter"].as_str().unwrap_or("?"),
                        x["score"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect();
            line += &format!(" — suspects: {}", names.join(", "));
        }
        return Some(line);
    }
    if topic.contains("/alarm/") && j.get("kind").is_some() {
        let kind = j["kind"].as_str().unwrap_or("?");
        let unit = alarm_unit(kind);
        let figure = |k: &str| match j[k].as_f64() {
            Some(v) => format!("{v:.1}{unit}"),
            None => "-".to_string(),
        };
        return Some(format!(
            "         ALARM {} {kind} {} ({}) value {} threshold {}",
            j["state"].as_str().unwrap_or("?"),
            j["subject"].as_str().unwrap_or("?"),
            j["severity"].as_str().unwrap_or("?"),
            figure("value"),
            figure("threshold"),
        ));
    }
    None
}

/// The unit of an alarm kind's `value` and `threshold`, as the demo prints them (docs/alarms.md).
fn alarm_unit(kind: &str) -> &'static str {
    match kind {
        "voltage_high" | "voltage_low" | "phase_loss" => " V",
        "high_loss" | "negative_loss" | "current_unbalance" => " %",
        "meter_offline" => " s",
        _ => "",
    }
}

/// One line of the live summary: meters, store, uplink, each area's rolling loss and the
/// number of standing alarms.
pub fn summary_line(elapsed: Duration, s: &GatewayState) -> String {
    let mut line = format!(
        "[{:>4} s] meters online {}/{} | readings stored {} | published {} acked {} | backlog {} | broker {}",
        elapsed.as_secs(),
        s.meters_online,
        s.meters_total,
        s.readings_stored,
        s.uplink.published,
        s.uplink.acked,
        s.uplink.backlog,
        if s.uplink.connected {
            "connected"
        } else {
            "disconnected"
        },
    );
    for r in &s.rolling_loss {
        match r.loss_pct {
            Some(pct) => line += &format!(" | area {} loss {pct:.1} % (rolling)", r.area),
            None => line += &format!(" | area {} loss - (rolling)", r.area),
        }
    }
    line += &format!(" | alarms {}", s.alarms_active);
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::loss::RollingLoss;

    #[test]
    fn the_demo_zone_puts_midnight_seconds_after_the_start() {
        for now in [
            clock::parse_rfc3339("2026-11-29T18:42:07.250Z").unwrap(),
            clock::parse_rfc3339("2026-11-29T00:00:03.000Z").unwrap(),
            clock::parse_rfc3339("2026-11-29T11:59:50.999Z").unwrap(),
        ] {
            let z = demo_zone(now, MIDNIGHT_AFTER_S);
            let midnight = z.next_day_start_ms(now);
            let to_midnight = midnight - now;
            assert!(
                to_midnight > (MIDNIGHT_AFTER_S - 1) * 1000
                    && to_midnight <= MIDNIGHT_AFTER_S * 1000,
                "{} {to_midnight}",
                z.name()
            );
            assert_eq!(z.next_day_start_ms(midnight) - midnight, 86_400_000);
            assert!(z.name().starts_with("demo UTC"), "{}", z.name());
        }
        let z = demo_zone(clock::parse_rfc3339("2026-11-29T18:42:03Z").unwrap(), 15);
        assert_eq!(z.name(), "demo UTC+05:17:42");
    }

    #[test]
    fn freezes_collection_curves_and_daily_loss_get_a_line() {
        let z = LocalTime::fixed_offset(3600, "demo UTC+01:00:00").unwrap();
        let freeze = serde_json::json!({"meter": "h11", "kind": "day", "ts": "2026-11-29T23:00:00.000Z",
            "day": "2026-11-30", "source": "interpolated", "late": false,
            "values": {"energy_import_kwh": 12.345, "energy_export_kwh": 0.0, "energy_import_t1_kwh": 3.0}});
        let line = event_line("amr/demo-gw/freeze/h11", &freeze, &z).unwrap();
        assert_eq!(
            line.trim(),
            "FREEZE day 2026-11-30 00:00:00 h11: energy_import_kwh 12.35 kWh, \
             energy_export_kwh 0.00 kWh (interpolated)"
        );
        let report = serde_json::json!({"day": "2026-11-30", "configured": 8, "frozen": 7,
            "rate_pct": 87.5, "failed": ["h23"],
            "buses": [{"bus": "rs485-1", "configured": 2, "frozen": 2}],
            "areas": [{"area": "T1", "configured": 8, "frozen": 7}]});
        let line = event_line("amr/demo-gw/collection", &report, &z).unwrap();
        assert_eq!(
            line.trim(),
            "COLLECTION 2026-11-30: 7 of 8 meters with a daily freeze (87.5 %), failed: h23 \
             | buses rs485-1 2/2 | areas T1 7/8"
        );
        let curve = serde_json::json!({"meter": "supply", "start": "2026-11-29T23:00:00.000Z",
            "end": "2026-11-29T23:01:00.000Z", "points": [{"ts": "2026-11-29T23:00:00.000Z",
            "energy": {"energy_import_kwh": 12.5}, "instant": {"power_kw": 6.25, "voltage_l1_v": 231.0}}]});
        let line = event_line("amr/demo-gw/curve/supply", &curve, &z).unwrap();
        assert_eq!(
            line.trim(),
            "curve supply 00:00:00–00:01:00: 1 point(s), at 00:00:00: energy_import_kwh 12.50 kWh; \
             power_kw 6.25 kW, voltage_l1_v 231.00 V"
        );
        let day = serde_json::json!({"area": "T1", "day": "2026-11-30", "supply_kwh": 150.0,
            "sales_kwh": 141.0, "loss_kwh": 9.0, "loss_pct": 6.0, "complete": false, "missing": ["h23"]});
        let line = event_line("amr/demo-gw/loss/T1/day", &day, &z).unwrap();
        assert_eq!(
            line.trim(),
            "DAILY LOSS T1 2026-11-30: supply 150.00 kWh, sales 141.00 kWh, loss 9.00 kWh = 6.0 % \
             (incomplete, missing: h23)"
        );
        let interval = serde_json::json!({"area": "T1", "start": "2026-11-29T23:00:00.000Z",
            "end": "2026-11-29T23:01:00.000Z", "supply_kwh": 0.2, "sales_kwh": 0.19, "loss_kwh": 0.01,
            "loss_pct": 5.0});
        let line = event_line("amr/demo-gw/loss/T1", &interval, &z).unwrap();
        assert!(
            line.contains("loss T1 00:00:00–00:01:00: supply 0.200 kWh"),
            "{line}"
        );
    }

    #[test]
    fn summary_shows_rolling_loss_and_alarms() {
        let s = GatewayState {
            meters_total: 9,
            meters_online: 8,
            rolling_loss: vec![RollingLoss {
                area: "T1".into(),
                start_ms: 0,
                end_ms: 300_000,
                supply_kwh: 10.0,
                sales_kwh: 9.58,
                loss_kwh: 0.42,
                loss_pct: Some(4.2),
                coverage_pct: 100.0,
            }],
            alarms_active: 2,
            ..Default::default()
        };
        let line = summary_line(Duration::from_secs(12), &s);
        assert!(line.contains("meters online 8/9"), "{line}");
        assert!(
            line.ends_with("| area T1 loss 4.2 % (rolling) | alarms 2"),
            "{line}"
        );
    }
}
