//! `amr-gateway demo`: a simulated area, an embedded MQTT broker on 127.0.0.1 and the gateway,
//! with a live summary — nothing to install or configure.

use crate::config;
use crate::gateway::{self, GatewayState};
use crate::meter::ModelLibrary;
use crate::sim;
use std::time::Duration;
use tokio::sync::watch;

const SIM_TEMPLATE: &str = include_str!("../config/demo-sim.toml");
const GATEWAY_TEMPLATE: &str = include_str!("../config/demo.toml");

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

    let cfg = config::load(&gw_path).map_err(|e| e.to_string())?;
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
    println!();
    let (live_tx, live_rx) = watch::channel(GatewayState::default());
    let gw = tokio::spawn(gateway::run(cfg, stop_rx.clone().into(), Some(live_tx)));
    let headend = tokio::spawn(print_events(mqtt_port, broker_stop_rx));

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

/// A headend of its own: subscribes to the demo's broker and prints every closed loss interval
/// and every alarm event as it arrives.
async fn print_events(port: u16, mut stop: watch::Receiver<bool>) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new("amr-gateway-demo-headend", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 64);
    let _ = client
        .subscribe("amr/demo-gw/loss/#", QoS::AtLeastOnce)
        .await;
    let _ = client
        .subscribe("amr/demo-gw/alarm/+/+", QoS::AtLeastOnce)
        .await;
    loop {
        let ev = tokio::select! {
            ev = events.poll() => ev,
            _ = stop.changed() => break,
        };
        match ev {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&p.payload)
                    && let Some(line) = event_line(&p.topic, &json)
                {
                    println!("{line}");
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// A human line for a loss record or an alarm event (None for anything else).
pub fn event_line(topic: &str, j: &serde_json::Value) -> Option<String> {
    let time = |k: &str| {
        j[k].as_str()
            .map(|t| t.get(11..19).unwrap_or(t).to_string())
            .unwrap_or_default()
    };
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
