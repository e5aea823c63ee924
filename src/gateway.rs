//! `run`: the daemon. Wires the bus tasks, the store writer and the uplink together, and stops
//! them in order on a shutdown signal (buses first, then the writer drains what they produced,
//! then the uplink says goodbye).

use crate::bus::{BusEvent, MeterStatus, OfflinePolicy, run_bus};
use crate::clock::{now_ms, rfc3339_ms};
use crate::config::Config;
use crate::store::{Batch, Message, SharedStore, Store};
use crate::uplink::topics::{Topics, json_number};
use crate::uplink::{UplinkState, run as run_uplink};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{error, info, warn};

/// Most bus events folded into one store transaction.
const MAX_BATCH: usize = 1000;
/// How often history is pruned and the size bound checked.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Live figures of a running gateway (for the demo's summary and tests).
#[derive(Debug, Clone, Default)]
pub struct GatewayState {
    pub meters_total: usize,
    pub meters_online: usize,
    pub readings_stored: u64,
    pub uplink: UplinkState,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot create data_dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

/// Runs the gateway until `shutdown` turns true. `live` receives the gateway's figures.
pub async fn run(
    config: Config,
    shutdown: watch::Receiver<bool>,
    live: Option<watch::Sender<GatewayState>>,
) -> Result<(), RunError> {
    std::fs::create_dir_all(&config.gateway.data_dir).map_err(|e| RunError::DataDir {
        path: config.gateway.data_dir.display().to_string(),
        source: e,
    })?;
    let db = config.db_path();
    let store = Store::open(&db, &config.store)?;
    let topics = Topics::new(&config.mqtt.topic_prefix, &config.gateway.id);
    let learned = store.block_limits()?;
    // Retained meter states are republished at start (a broker restarted without persistence
    // has lost them), marked as from before the restart until the buses report anew.
    let mut restart = Batch::default();
    for (meter, state) in store.meter_states()? {
        if config.meter(&meter).is_some() {
            restart.messages.push(Message {
                topic: topics.meter_state(&meter),
                payload: state,
                qos: 1,
                retain: true,
                sequenced: false,
            });
        }
    }
    let mut store = store;
    if !restart.is_empty() {
        store.commit(&restart)?;
    }
    let store: SharedStore = Arc::new(std::sync::Mutex::new(store));
    info!(gateway = %config.gateway.id, db = %db.display(), buses = config.buses.len(),
        meters = config.meters.len(), "gateway starting");

    // Uplink.
    let wake = Arc::new(Notify::new());
    let (uplink_tx, uplink_rx) = watch::channel(UplinkState::default());
    let (uplink_stop_tx, uplink_stop_rx) = watch::channel(false);
    let uplink = tokio::spawn(run_uplink(
        config.mqtt.clone(),
        topics.clone(),
        store.clone(),
        wake.clone(),
        uplink_tx,
        uplink_stop_rx,
    ));

    // Buses.
    let (events_tx, events_rx) = mpsc::channel::<BusEvent>(4096);
    let mut bus_tasks = Vec::new();
    for bus in &config.buses {
        let meters: Vec<_> = config
            .meters
            .iter()
            .filter(|m| m.bus == bus.name)
            .filter_map(|m| {
                config
                    .models
                    .get(&m.model)
                    .map(|model| (m.clone(), Arc::new(model.clone())))
            })
            .collect();
        bus_tasks.push(tokio::spawn(run_bus(
            bus.clone(),
            meters,
            learned.clone(),
            OfflinePolicy::default(),
            events_tx.clone(),
            shutdown.clone(),
        )));
    }
    drop(events_tx);

    // The store writer runs until every bus task has stopped and the channel is drained.
    let writer = tokio::spawn(write_events(
        config.clone(),
        topics,
        store.clone(),
        events_rx,
        wake.clone(),
        uplink_rx,
        live,
    ));
    for t in bus_tasks {
        let _ = t.await;
    }
    let _ = writer.await;
    let _ = uplink_stop_tx.send(true);
    let _ = uplink.await;
    info!("gateway stopped");
    Ok(())
}

/// Folds bus events into store transactions: history, outbox messages, learned limits.
async fn write_events(
    config: Config,
    topics: Topics,
    store: SharedStore,
    mut events: mpsc::Receiver<BusEvent>,
    wake: Arc<Notify>,
    uplink: watch::Receiver<UplinkState>,
    live: Option<watch::Sender<GatewayState>>,
) {
    let mut online: BTreeMap<String, bool> = BTreeMap::new();
    let mut readings_stored = 0u64;
    let mut last_prune = tokio::time::Instant::now() - PRUNE_EVERY;
    let mut buf = Vec::with_capacity(MAX_BATCH);
    loop {
        let n = events.recv_many(&mut buf, MAX_BATCH).await;
        if n == 0 {
            break;
        }
        let mut batch = Batch::default();
        let mut limits = Vec::new();
        for ev in buf.drain(..) {
            match ev {
                BusEvent::Reading(r) => {
                    batch.messages.push(topics.reading_message(&r));
                    batch.readings.push(r);
                }
                BusEvent::MeterState(s) => {
                    online.insert(s.meter.clone(), s.health.online == Some(true));
                    batch
                        .messages
                        .push(meter_state_message(&topics, &config, &s));
                }
                BusEvent::BlockLimit { meter, max_block } => limits.push((meter, max_block)),
            }
        }
        let count = batch.readings.len() as u64;
        let st = store.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut s = st.lock().unwrap();
            for (m, b) in &limits {
                s.set_block_limit(m, *b)?;
            }
            s.commit(&batch)
        })
        .await;
        match result {
            Ok(Ok(_)) => {
                readings_stored += count;
                wake.notify_one();
            }
            Ok(Err(e)) => error!(error = %e, "could not store a batch of {count} readings"),
            Err(e) => error!(error = %e, "store writer failed"),
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = tokio::time::Instant::now();
            let st = store.clone();
            let report =
                tokio::task::spawn_blocking(move || st.lock().unwrap().prune(now_ms())).await;
            match report {
                Ok(Ok(r)) => {
                    if r.dropped_messages > 0 {
                        warn!(
                            dropped = r.dropped_messages,
                            "store full ([store] max_size_mb): dropped the {} oldest unsent messages",
                            r.dropped_messages
                        );
                    }
                    if r.evicted_readings > 0 {
                        warn!(
                            evicted = r.evicted_readings,
                            "store full ([store] max_size_mb): deleted the {} oldest history rows",
                            r.evicted_readings
                        );
                    }
                }
                Ok(Err(e)) => warn!(error = %e, "pruning the store failed"),
                Err(_) => {}
            }
        }
        if let Some(live) = &live {
            let _ = live.send(GatewayState {
                meters_total: config.meters.len(),
                meters_online: online.values().filter(|v| **v).count(),
                readings_stored,
                uplink: uplink.borrow().clone(),
            });
        }
    }
}

/// The retained `meter/{id}/state` message: online/offline and health.
pub fn meter_state_message(topics: &Topics, config: &Config, s: &MeterStatus) -> Message {
    let h = &s.health;
    let model = config.meter(&s.meter).map(|m| m.model.clone());
    Message {
        topic: topics.meter_state(&s.meter),
        payload: json!({
            "meter": s.meter,
            "state": match h.online { Some(true) => "online", Some(false) => "offline", None => "unknown" },
            "ts": rfc3339_ms(s.ts_ms),
            "bus": s.bus,
            "unit": s.unit,
            "model": model,
            "last_ok": h.last_ok_ms.map(rfc3339_ms),
            "polls": h.polls,
            "success_rate_pct": json_number((h.success_rate_pct() * 10.0).round() / 10.0),
            "latency_ms": h.latency_ms.map(|l| json_number(l.round())),
            "timeouts": h.timeouts,
            "crc_errors": h.crc_errors,
            "wrong_unit": h.wrong_unit,
            "exceptions": h.exceptions,
            "consecutive_failures": h.consecutive_failures,
            "last_error": h.last_error,
        }),
        qos: 1,
        retain: true,
        sequenced: false,
    }
}
