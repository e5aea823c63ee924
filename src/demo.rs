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
    let (stop_tx, stop_rx) = watch::channel(false);
    let broker_task = tokio::spawn(broker.run(stop_rx.clone()));

    let sim_cfg = sim::SimConfig::load(&sim_path).map_err(|e| e.to_string())?;
    let _sim = sim::start(sim_cfg, &ModelLibrary::builtin()).map_err(|e| e.to_string())?;

    let cfg = config::load(&gw_path).map_err(|e| e.to_string())?;
    println!("amr-gateway demo");
    println!(
        "  simulated area: {} meters on {} RS-485 buses (pseudo-terminals in {})",
        cfg.meters.len(),
        cfg.buses.len(),
        dir.display()
    );
    println!("  embedded MQTT broker: 127.0.0.1:{mqtt_port}");
    println!("  watch it: mosquitto_sub -h 127.0.0.1 -p {mqtt_port} -t 'amr/#' -v");
    println!();
    let (live_tx, mut live_rx) = watch::channel(GatewayState::default());
    let gw = tokio::spawn(gateway::run(cfg, stop_rx.clone(), Some(live_tx)));

    let started = tokio::time::Instant::now();
    let deadline = for_s.map(|s| started + Duration::from_secs(s));
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
        }
        let s = live_rx.borrow_and_update().clone();
        println!("{}", summary_line(started.elapsed(), &s));
    }
    let _ = stop_tx.send(true);
    let _ = gw.await;
    let _ = broker_task.await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
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
