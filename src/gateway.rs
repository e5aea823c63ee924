//! `run`: the daemon. Wires the bus tasks, the store writer and the uplink together, and stops
//! them in order on a shutdown signal (buses first, then the writer drains what they produced,
//! then the uplink says goodbye).
//!
//! The store writer ([`write_events`]) is where the analytics run: the pipeline's
//! [`Writer`] folds each burst of bus events, and a tick at least every second, into one store
//! [`Batch`] — history, reading messages, meter states, and whatever the line-loss, alarm and
//! voltage-quality engines decided with their snapshots — committed in one transaction on a
//! blocking thread, so the buses never wait for the disk.
//!
//! Under systemd, `run` tells the service manager how it is doing ([`Liveness`]): READY once
//! started, a status line, and watchdog keep-alives only while every task makes progress.

use crate::analytics::loss::RollingLoss;
use crate::bus::{BusEvent, Learned, OfflinePolicy, run_bus_serving};
use crate::clock::now_ms;
use crate::config::Config;
use crate::liveness::{Heartbeat, Liveness};
use crate::model::MeterId;
use crate::pipeline::{Fold, Writer};
use crate::shutdown::{Shutdown, Stop};
use crate::store::{Batch, MetaKey, SharedStore, Store, StoreLock};
use crate::uplink::command::Authority;
use crate::uplink::contract::Topics;
use crate::uplink::desk::run_desk;
use crate::uplink::{UplinkState, run_with_commands};
pub use commands::StatusHook;
use commands::{BusDesk, GatewayExecutor, redact};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{error, info, warn};

mod commands;

/// Most bus events folded into one store transaction.
const MAX_BATCH: usize = 1000;
/// Readings held in memory while the store refuses commits before the gateway warns.
const MAX_UNSAVED_READINGS: usize = 100_000;
/// How often history is pruned and the size bound checked.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How often the analytics are ticked when no bus event arrives (loss intervals close,
/// alarm hold times elapse, days end).
const TICK: Duration = Duration::from_secs(1);

/// Live figures of a running gateway (for the demo's summary and tests).
#[derive(Debug, Clone, Default)]
pub struct GatewayState {
    pub meters_total: usize,
    pub meters_online: usize,
    pub readings_stored: u64,
    pub uplink: UplinkState,
    /// The rolling (real-time) loss of every area that has one.
    pub rolling_loss: Vec<RollingLoss>,
    /// Alarms standing now.
    pub alarms_active: usize,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Locked(#[from] crate::store::StoreLockError),
    #[error("cannot create data_dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    /// A task panicked or the store lost a batch: the gateway stopped the others in order and
    /// exits non-zero, so that systemd restarts it rather than leave it half dead.
    #[error("{0}; stopped the gateway so that it is restarted")]
    Failed(String),
}

/// What the binary adds to the daemon that the library's layers cannot build themselves.
#[derive(Clone, Default)]
pub struct Hooks {
    /// The `status --json` document, for the `status` command (`field::status::collect`).
    pub status: Option<StatusHook>,
}

/// Runs the gateway until `shutdown` says stop, or until a task fails. `live` receives the
/// gateway's figures.
pub async fn run(
    config: Config,
    shutdown: Shutdown,
    live: Option<watch::Sender<GatewayState>>,
) -> Result<(), RunError> {
    run_with_hooks(config, shutdown, live, Hooks::default()).await
}

/// [`run`] with the binary's [`Hooks`]. With at least one `[[command_key]]` the uplink takes
/// signed commands on `{prefix}/{gateway}/command` (see `uplink::desk`).
pub async fn run_with_hooks(
    config: Config,
    shutdown: Shutdown,
    live: Option<watch::Sender<GatewayState>>,
    hooks: Hooks,
) -> Result<(), RunError> {
    std::fs::create_dir_all(&config.gateway.data_dir).map_err(|e| RunError::DataDir {
        path: config.gateway.data_dir.display().to_string(),
        source: e,
    })?;
    // One daemon per store: held until `run` returns.
    let _lock = StoreLock::acquire(&config.gateway.data_dir)?;
    let db = config.db_path();
    let mut store = Store::open(&db, &config.store)?;
    store.set_meta(&MetaKey::DaemonVersion, env!("CARGO_PKG_VERSION"))?;
    let topics = Topics::new(&config.mqtt.topic_prefix, &config.gateway.id);
    let learned = store.learned()?;
    // The analytics continue from their snapshots; the start batch holds a power-off event
    // when the gateway was down, the retained set of active alarms and the meter states.
    let (writer_state, restart) = Writer::start(
        &config.pipeline_settings(),
        topics.clone(),
        &store,
        now_ms(),
    )?;
    let mut store = store;
    if !restart.is_empty() {
        store.commit(&restart)?;
    }
    let store: SharedStore = Arc::new(std::sync::Mutex::new(store));
    info!(gateway = %config.gateway.id, db = %db.display(), buses = config.buses.len(),
        meters = config.meters.len(), "gateway starting");
    if !config.mqtt.tls && !crate::uplink::tls::is_loopback(&config.mqtt.host) {
        warn!(
            "[mqtt] tls = false: readings and commands go to broker {}:{} in PLAIN TEXT over \
             the network; use tls = true unless the link is otherwise protected",
            config.mqtt.host, config.mqtt.port
        );
    }

    // Uplink.
    let wake = Arc::new(Notify::new());
    let mut liveness = Liveness::from_environment();
    let (uplink_tx, uplink_rx) = watch::channel(UplinkState::default());
    let (uplink_stop, uplink_shutdown) = Stop::new();
    let takes_commands = !config.commands.keys.is_empty();
    let (command_tx, command_rx) = mpsc::channel(crate::uplink::publisher::COMMAND_QUEUE);
    let uplink = tokio::spawn(run_with_commands(
        config.mqtt.clone(),
        topics.clone(),
        store.clone(),
        wake.clone(),
        uplink_tx,
        takes_commands.then_some(command_tx),
        uplink_shutdown.clone(),
    ));

    // Buses. They stop on the outside signal or when another task failed.
    let (bus_stop, bus_shutdown) = Stop::new();
    let (events_tx, events_rx) = mpsc::channel::<BusEvent>(4096);
    let mut buses = tokio::task::JoinSet::new();
    let mut bus_names = BTreeMap::new();
    let mut bus_desks = Vec::new();
    for (bus, meters) in config.bus_settings() {
        let name = format!("bus `{}`", bus.name);
        let heartbeat = liveness.register(name.clone());
        let (requests_tx, requests) = mpsc::channel(16);
        bus_desks.push(BusDesk {
            meters: meters.iter().map(|m| m.id.clone()).collect(),
            requests: requests_tx,
        });
        let task = buses.spawn(run_bus_serving(
            bus,
            meters,
            learned.clone(),
            OfflinePolicy::default(),
            events_tx.clone(),
            requests,
            bus_shutdown.clone(),
            heartbeat,
        ));
        bus_names.insert(task.id(), name);
    }
    drop(events_tx);

    // The command desk: checks, audits, answers and runs the headend's signed commands.
    let desk = takes_commands.then(|| {
        let config_text = std::fs::read_to_string(&config.source)
            .map(|t| redact(&t))
            .unwrap_or_default();
        let executor = GatewayExecutor {
            config: Arc::new(config.clone()),
            config_text,
            status: hooks.status.clone(),
            buses: bus_desks,
        };
        tokio::spawn(run_desk(
            Authority::new(&config.gateway.id, config.commands.clone()),
            topics.clone(),
            store.clone(),
            wake.clone(),
            Arc::new(executor),
            command_rx,
            uplink_shutdown,
        ))
    });

    // The store writer runs until every bus task has stopped and the channel is drained.
    let live = live.unwrap_or_else(|| {
        watch::channel(GatewayState {
            meters_total: config.meters.len(),
            ..GatewayState::default()
        })
        .0
    });
    let summary = live.subscribe();
    let mut writer = tokio::spawn(write_events(
        writer_state,
        store.clone(),
        events_rx,
        wake.clone(),
        uplink_rx,
        Some(live),
        liveness.register("the store writer"),
    ));
    let mut uplink = uplink;
    liveness.ready(&status_line(&summary.borrow()));

    // Until the signal, or until a task fails: a bus that panicked, a writer that stopped (it
    // only stops on its own when a commit was lost), an uplink that stopped.
    let mut failures: Vec<String> = Vec::new();
    let mut writer_end = None;
    let mut uplink_end = None;
    let mut outside = shutdown;
    loop {
        tokio::select! {
            _ = outside.wait() => break,
            _ = liveness.due() => liveness.report(&status_line(&summary.borrow())),
            Some(end) = buses.join_next_with_id(), if !buses.is_empty() => {
                if let Err(e) = end {
                    let name = bus_names.get(&e.id()).cloned().unwrap_or_default();
                    failures.push(task_failure(&name, e));
                    break;
                }
            }
            end = &mut writer => {
                failures.extend(writer_failure(end));
                writer_end = Some(());
                break;
            }
            end = &mut uplink => {
                failures.push(match end {
                    Err(e) => task_failure("the uplink", e),
                    Ok(()) => "the uplink stopped on its own".to_string(),
                });
                uplink_end = Some(());
                break;
            }
        }
    }
    if !failures.is_empty() {
        error!("{}; stopping the gateway", failures.join("; "));
        liveness.stopping();
    }
    // Stop in order: buses, then the writer drains what they produced, then the uplink says
    // goodbye.
    bus_stop.stop();
    while let Some(end) = buses.join_next_with_id().await {
        if let Err(e) = end {
            let name = bus_names.get(&e.id()).cloned().unwrap_or_default();
            failures.push(task_failure(&name, e));
        }
    }
    if writer_end.is_none() {
        failures.extend(writer_failure(writer.await));
    }
    uplink_stop.stop();
    if let Some(desk) = desk {
        let _ = desk.await;
    }
    if uplink_end.is_none()
        && let Err(e) = uplink.await
    {
        failures.push(task_failure("the uplink", e));
    }
    if failures.is_empty() {
        info!("gateway stopped");
        Ok(())
    } else {
        Err(RunError::Failed(failures.join("; ")))
    }
}

/// The status line systemd shows (`systemctl status`): meters online, backlog, broker.
fn status_line(s: &GatewayState) -> String {
    format!(
        "meters online {}/{}, backlog {}, broker {}",
        s.meters_online,
        s.meters_total,
        s.uplink.backlog,
        if s.uplink.connected {
            "connected"
        } else {
            "not connected"
        }
    )
}

/// A task that ended with a panic (or was cancelled), as one line for the log and the exit.
fn task_failure(task: &str, e: tokio::task::JoinError) -> String {
    if e.is_panic() {
        let panic = e.into_panic();
        let text = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_string());
        format!("{task} panicked: {text}")
    } else {
        format!("{task} was cancelled")
    }
}

/// What the store writer's end says about a failure (none when it stopped in order).
fn writer_failure(end: Result<Result<(), String>, tokio::task::JoinError>) -> Option<String> {
    match end {
        Ok(Ok(())) => None,
        Ok(Err(lost)) => Some(lost),
        Err(e) => Some(task_failure("the store writer", e)),
    }
}

/// Test hooks that make a named step of the daemon panic, to prove a failing task stops it
/// with a non-zero exit: `AMR_FAILPOINT=store-commit` (inside a store commit) or `writer` (in
/// the store writer's loop). Debug builds only; release builds have none.
fn failpoint(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("AMR_FAILPOINT").is_ok_and(|v| v == name) {
        panic!("failpoint {name}");
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// Test hook that makes a named step of the daemon stop making progress for good, to prove
/// that the watchdog keep-alives stop: `AMR_FAILPOINT=writer-hang` (the store writer, after
/// its first iteration). Debug builds only.
async fn hang_point(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("AMR_FAILPOINT").is_ok_and(|v| v == name) {
        std::future::pending::<()>().await;
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// Commits `batch` (and what was learned about meters) on a blocking thread. Returns whether it was
/// stored; failures are logged.
/// Why [`commit`] did not store a batch.
enum NotStored {
    /// The store refused it (disk full, I/O error): here it is back, to retry.
    Refused(Batch, Vec<(MeterId, Learned)>),
    /// The commit panicked and took the batch with it; the store may not be used again.
    Lost(String),
}

async fn commit(
    store: &SharedStore,
    batch: Batch,
    learned: Vec<(MeterId, Learned)>,
) -> Result<(), NotStored> {
    let count = batch.readings.len();
    let st = store.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut s = st.lock().unwrap();
        failpoint("store-commit");
        let outcome = (|| {
            for (m, l) in &learned {
                s.remember(m, l)?;
            }
            s.commit(&batch)
        })();
        match outcome {
            Ok(_) => Ok(()),
            Err(e) => {
                if e.is_full() {
                    // Make room: pruning drops the oldest history first.
                    let _ = s.prune(now_ms());
                }
                Err(Box::new((e, batch, learned)))
            }
        }
    })
    .await;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(refused)) => {
            let (e, batch, learned) = *refused;
            error!(
                error = %e,
                "could not store a batch of {count} readings; keeping it in memory and retrying"
            );
            Err(NotStored::Refused(batch, learned))
        }
        Err(e) => {
            // The blocking task panicked: the batch is gone with it, and the store's lock is
            // poisoned. Say so and stop: a restart reopens the store and the meters' registers
            // are read again.
            Err(NotStored::Lost(format!(
                "{}: a batch of {count} readings was not stored",
                task_failure("a store commit", e)
            )))
        }
    }
}

/// Folds bus events, and a tick every second, into store transactions: history, outbox
/// messages, what was learned about meters and the analytics' output. Runs until every bus has stopped and
/// the channel is drained, then saves the analytics' state one last time.
async fn write_events(
    mut writer: Writer,
    store: SharedStore,
    mut events: mpsc::Receiver<BusEvent>,
    wake: Arc<Notify>,
    uplink: watch::Receiver<UplinkState>,
    live: Option<watch::Sender<GatewayState>>,
    heartbeat: Heartbeat,
) -> Result<(), String> {
    let mut readings_stored = 0u64;
    let mut last_prune = tokio::time::Instant::now() - PRUNE_EVERY;
    let mut buf = Vec::with_capacity(MAX_BATCH);
    // A batch the store refused (disk full, I/O error): kept and retried with the next one, so
    // nothing collected is lost while the store recovers.
    let mut unsaved: Option<(Batch, Vec<(MeterId, Learned)>)> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let open = tokio::select! {
            n = events.recv_many(&mut buf, MAX_BATCH) => n > 0,
            _ = tick.tick() => true,
        };
        if !open {
            break;
        }
        failpoint("writer");
        let Fold {
            mut batch,
            mut learned,
        } = writer.fold(buf.drain(..), now_ms());
        if let Some((mut earlier, mut earlier_learned)) = unsaved.take() {
            earlier.append(batch);
            earlier_learned.append(&mut learned);
            (batch, learned) = (earlier, earlier_learned);
        }
        let count = batch.readings.len() as u64;
        if !batch.is_empty() || !learned.is_empty() {
            match commit(&store, batch, learned).await {
                Ok(()) => {
                    readings_stored += count;
                    wake.notify_one();
                }
                Err(NotStored::Lost(lost)) => return Err(lost),
                Err(NotStored::Refused(batch, learned)) => {
                    let kept = (batch, learned);
                    if kept.0.readings.len() > MAX_UNSAVED_READINGS {
                        warn!(
                            readings = kept.0.readings.len(),
                            "the store has refused batches for a while; {} readings are held in memory only",
                            kept.0.readings.len()
                        );
                    }
                    unsaved = Some(kept);
                }
            }
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
                Err(e) => return Err(task_failure("pruning the store", e)),
            }
        }
        if let Some(live) = &live {
            let _ = live.send(GatewayState {
                meters_total: writer.meters_total(),
                meters_online: writer.meters_online(),
                readings_stored,
                uplink: uplink.borrow().clone(),
                rolling_loss: writer.analytics().rolling(),
                alarms_active: writer.analytics().active_alarm_count(),
            });
        }
        heartbeat.beat();
        hang_point("writer-hang").await;
    }
    let mut last = writer.finish(now_ms());
    let mut learned = Vec::new();
    if let Some((mut earlier, earlier_learned)) = unsaved.take() {
        earlier.append(last);
        (last, learned) = (earlier, earlier_learned);
    }
    match commit(&store, last, learned).await {
        Ok(()) => wake.notify_one(),
        Err(NotStored::Lost(lost)) => return Err(lost),
        Err(NotStored::Refused(batch, _)) => {
            return Err(format!(
                "the store refused the last batch at shutdown; {} readings were not stored",
                batch.readings.len()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Reading;
    use crate::store::MetaKey;

    const CONFIG: &str = r#"
[gateway]
id = "gw"
data_dir = "data"
[mqtt]
host = "127.0.0.1"
[[bus]]
name = "b"
protocol = "modbus-rtu"
device = "/dev/null"
[[meter]]
id = "s"
bus = "b"
unit = 1
model = "chint-dtsu666"
[[area]]
id = "T1"
supply = ["s"]
customers = []
"#;

    /// The writer task stores what the buses send, keeps ticking while they are quiet, and
    /// saves the analytics' state when they stop.
    #[tokio::test]
    async fn writer_task_stores_readings_and_saves_state_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::load_str(CONFIG, &dir.path().join("amr.toml")).expect("config");
        let mut store = Store::open(&dir.path().join("db"), &config.store).unwrap();
        let topics = Topics::new("amr", "gw");
        let start = now_ms();
        let (writer, batch) =
            Writer::start(&config.pipeline_settings(), topics, &store, start).unwrap();
        store.commit(&batch).unwrap();
        assert!(store.meta(&MetaKey::LossEngine).unwrap().is_some());
        let store: SharedStore = Arc::new(std::sync::Mutex::new(store));
        let (tx, rx) = mpsc::channel(16);
        let (_up_tx, up_rx) = watch::channel(UplinkState::default());
        let (live_tx, mut live_rx) = watch::channel(GatewayState::default());
        let task = tokio::spawn(write_events(
            writer,
            store.clone(),
            rx,
            Arc::new(Notify::new()),
            up_rx,
            Some(live_tx),
            Heartbeat::unwatched(),
        ));
        let values = [("energy_import_kwh".to_string(), 10.0)].into();
        tx.send(BusEvent::Reading(Reading {
            meter: "s".into(),
            ts_ms: start,
            values,
        }))
        .await
        .unwrap();
        // A tick comes by itself within a second or so, with no event.
        live_rx.changed().await.unwrap();
        live_rx.changed().await.unwrap();
        assert_eq!(live_rx.borrow().readings_stored, 1);
        drop(tx);
        task.await.unwrap().expect("the writer stops in order");
        let s = store.lock().unwrap();
        assert_eq!(s.history("s", 0, i64::MAX).unwrap().len(), 1);
        let alive: i64 = s
            .meta(&MetaKey::LastAlive)
            .unwrap()
            .unwrap()
            .parse()
            .unwrap();
        assert!(alive > start, "the last batch carries the heartbeat");
    }

    /// A batch the store refuses (disk full) is kept and stored with a later commit: nothing
    /// collected is lost while the disk is full.
    #[tokio::test]
    async fn a_refused_batch_is_kept_and_stored_later() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::load_str(CONFIG, &dir.path().join("amr.toml")).expect("config");
        let store = Store::open(&dir.path().join("db"), &config.store).unwrap();
        let pages: i64 = store
            .connection()
            .pragma_query_value(None, "page_count", |r| r.get(0))
            .unwrap();
        store
            .connection()
            .pragma_update(None, "max_page_count", pages)
            .unwrap();
        let store: SharedStore = Arc::new(std::sync::Mutex::new(store));
        let batch = Batch {
            readings: (0..3000)
                .map(|i| Reading {
                    meter: "s".into(),
                    ts_ms: i,
                    values: [("energy_import_kwh".to_string(), i as f64)].into(),
                })
                .collect(),
            ..Default::default()
        };
        let Err(NotStored::Refused(kept, limits)) =
            commit(&store, batch, vec![("s".into(), Learned::BlockLimit(40))]).await
        else {
            panic!("the full store refuses the batch and hands it back");
        };
        assert_eq!(kept.readings.len(), 3000);
        store
            .lock()
            .unwrap()
            .connection()
            .pragma_update(None, "max_page_count", 1_000_000)
            .unwrap();
        assert!(commit(&store, kept, limits).await.is_ok());
        let s = store.lock().unwrap();
        assert_eq!(s.history("s", 0, i64::MAX).unwrap().len(), 3000);
        assert_eq!(s.block_limits().unwrap().get("s"), Some(&40));
    }
}
