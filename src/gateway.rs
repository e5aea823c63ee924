//! `run`: the daemon. Wires the bus tasks, the store writer and the uplink together, and stops
//! them in order on a shutdown signal (buses first, then the writer drains what they produced,
//! then the uplink says goodbye).
//!
//! The store writer ([`write_events`]) is where the analytics run: the pipeline's
//! [`Writer`] folds each burst of bus events into one store [`Batch`](crate::store::Batch) —
//! history, reading messages, meter states — and ticks the analytics every second the bus is
//! quiet, in a batch of its own: whatever the line-loss, alarm and voltage-quality engines
//! decided, with their snapshots (under a steady stream of events the tick goes with the
//! events' batch at least every few seconds). Each batch is committed in one transaction on a
//! blocking thread, so the buses never wait for the disk.
//!
//! Under systemd, `run` tells the service manager how it is doing ([`Liveness`]): READY once
//! started, a status line, and watchdog keep-alives only while every task makes progress.

use crate::analytics::loss::RollingLoss;
use crate::bus::{BusEvent, OfflinePolicy, run_bus_serving};
use crate::clock::now_ms;
use crate::config::Config;
use crate::liveness::{Heartbeat, Liveness};
use crate::pipeline::{Fold, Held, MAX_HELD_VALUES, Shed, Writer};
use crate::shutdown::{Shutdown, Stop};
use crate::store::{MetaKey, Reserve, SharedStore, Store, StoreLock};
use crate::uplink::command::Authority;
use crate::uplink::contract::{StartReason, Topics};
use crate::uplink::desk::run_desk;
use crate::uplink::{UplinkState, run_with_commands};
pub use commands::{
    APPLY_SUFFIX, ApplyMarker, PREVIOUS_SUFFIX, RestartHook, StatusHook, apply_marker,
    rollback_apply,
};
use commands::{BusDesk, GatewayExecutor, redact};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, error, info, warn};

mod commands;
pub mod health;

/// Most bus events folded into one store transaction. Buses on Modbus TCP deliver a whole
/// area's readings within a second of each poll: a window of 1000 readings held about 5 MB
/// at once (each reading and its message), and the allocator keeps the peak. A window of 256
/// holds a quarter of it and still commits a burst of 1000 readings in four transactions —
/// fewer than readings spread over the minute take (one per `commit_window_ms`).
const MAX_BATCH: usize = 256;
/// How often history is pruned and the size bound checked.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How often the store is checked for damage while running.
const QUICK_CHECK_EVERY: Duration = Duration::from_secs(900);
/// How often the analytics are ticked when no bus event arrives (loss intervals close,
/// alarm hold times elapse, days end).
const TICK: Duration = Duration::from_secs(1);
/// The analytics are ticked in a transaction of their own when the bus is quiet (a [`TICK`]
/// after the last events); under a steady stream of events, with the events' fold once this
/// long has passed since the last tick.
const TICK_DELAY_MAX: Duration = Duration::from_secs(5);
/// How often the certificates of the MQTT link are checked for `certificate_expiry` (also at
/// every start, so after a SIGHUP reload).
const CERTIFICATE_CHECK_EVERY: Duration = Duration::from_secs(86_400);

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
    /// Asks the daemon to restart the gateway with the configuration file as it now is
    /// (the SIGHUP path), for `config_apply`; without it `config_apply` fails.
    pub restart: Option<RestartHook>,
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
    // A directory that cannot be written is a clear error naming it, the cause and the remedy.
    crate::store::check_data_dir(&config.gateway.data_dir)?;
    // One daemon per store: held until `run` returns.
    let _lock = StoreLock::acquire(&config.gateway.data_dir)?;
    let db = config.db_path();
    // A damaged store is moved aside and replaced: it must not keep the gateway down.
    let (store, recovered) = Store::open_or_recover(&db, &config.store)?;
    if let Some(r) = &recovered {
        log_recovery(r);
    }
    let mut store = store;
    store.set_meta(&MetaKey::DaemonVersion, env!("CARGO_PKG_VERSION"))?;
    // Why this process started: the last one's clean-stop marker and boot (health message).
    let boot = health::BootMark::now();
    let start_reason = health::start_reason(
        store.meta(&MetaKey::CleanStop)?.as_deref(),
        store.meta(&MetaKey::Boot)?.as_deref(),
        &boot,
    );
    match start_reason {
        StartReason::Normal => {}
        StartReason::AfterCrash => warn!(
            "starting after a crash: the last run did not stop cleanly (same boot); nothing \
             committed is lost, the meters are read again"
        ),
        StartReason::AfterPowerLoss => warn!(
            "starting after a power loss or reboot: the last run did not stop cleanly; nothing \
             committed is lost"
        ),
    }
    store.set_meta(&MetaKey::CleanStop, health::RUNNING)?;
    store.set_meta(&MetaKey::Boot, &boot.to_meta())?;
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
    let mut writer_state = writer_state;
    let mut restart = restart;
    if let Some(r) = &recovered {
        restart.append(writer_state.store_recovered(r, now_ms()));
    }
    if !restart.is_empty() {
        store.commit(&restart)?;
    }
    let store: SharedStore = Arc::new(std::sync::Mutex::new(store));
    // Space kept in reserve so that a full disk can be recovered from (docs/reliability.md).
    Reserve::new(&config.gateway.data_dir).restore();
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
    let (health_tx, health_rx) = watch::channel(Vec::new());
    let uplink = tokio::spawn(run_with_commands(
        config.mqtt.clone(),
        topics.clone(),
        store.clone(),
        wake.clone(),
        uplink_tx,
        takes_commands.then_some(command_tx),
        (config.health.interval_s > 0).then_some(health_rx),
        uplink_shutdown.clone(),
    ));
    let health_shutdown = uplink_shutdown.clone();

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
            time_sync: bus.protocol == crate::bus::Protocol::Dlt645,
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
            restart: hooks.restart.clone(),
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
    let tally = health::Tally::default();
    let clock_watch = health::ClockWatch::new(config.gateway.require_synced_clock);
    let health_task = (config.health.interval_s > 0).then(|| {
        let gatherer = health::HealthGatherer::new(
            start_reason,
            &config.gateway.data_dir,
            config.gateway.require_synced_clock,
            config
                .buses
                .iter()
                .map(|b| {
                    let meters = config.meters.iter().filter(|m| m.bus == b.name);
                    (b.name.clone(), meters.map(|m| m.id.clone()).collect())
                })
                .collect(),
        );
        tokio::spawn(run_health(
            gatherer,
            Duration::from_secs(config.health.interval_s),
            tally.clone(),
            live.subscribe(),
            store.clone(),
            db.clone(),
            health_tx,
            health_shutdown,
        ))
    });
    let mut writer = tokio::spawn(write_events(
        writer_state,
        store.clone(),
        events_rx,
        wake.clone(),
        uplink_rx,
        Some(live),
        liveness.register("the store writer"),
        tally,
        clock_watch,
        CertificateWatch::new(&config.mqtt),
    ));
    let mut uplink = uplink;
    // Up: a `config_apply` that restarted the gateway gets its result now (see
    // `gateway::commands`).
    commands::finish_apply(&config.source, &store, &topics, &wake).await;
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
    if let Some(task) = health_task {
        let _ = task.await;
    }
    if uplink_end.is_none()
        && let Err(e) = uplink.await
    {
        failures.push(task_failure("the uplink", e));
    }
    if failures.is_empty() {
        // The next start is a normal one.
        let marked =
            crate::store::with_store(&store, |s| s.set_meta(&MetaKey::CleanStop, health::STOPPED))
                .await;
        if let Err(e) = marked {
            warn!("cannot record the clean stop in the store: {e}");
        }
        info!("gateway stopped");
        Ok(())
    } else {
        Err(RunError::Failed(failures.join("; ")))
    }
}

/// Gathers the health figures every `every` (the first after at most 5 s, so a restart shows
/// its start reason soon) and hands the payload to the publisher; refreshes the boot mark in
/// the store (to tell a later crash from a power loss). Runs until `shutdown`.
#[allow(clippy::too_many_arguments)]
async fn run_health(
    mut gatherer: health::HealthGatherer,
    every: Duration,
    tally: health::Tally,
    live: watch::Receiver<GatewayState>,
    store: SharedStore,
    db: std::path::PathBuf,
    out: watch::Sender<Vec<u8>>,
    mut shutdown: Shutdown,
) {
    let first = tokio::time::Instant::now() + every.min(Duration::from_secs(5));
    let mut tick = tokio::time::interval_at(first, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        let state = live.borrow().clone();
        let wal = db.with_extension("db-wal");
        let store_bytes = [db.as_path(), wal.as_path()]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .reduce(|a, b| a + b);
        let inputs = health::Inputs {
            uplink: state.uplink,
            store_bytes,
            alarms_active: state.alarms_active,
            commands_rejected: crate::uplink::desk::rejected_by_reason()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        };
        let report = gatherer.gather(&tally.figures(), inputs, now_ms());
        let _ = out.send(crate::uplink::contract::health_payload(&report));
        let boot = health::BootMark::now().to_meta();
        let _ = crate::store::with_store(&store, move |s| s.set_meta(&MetaKey::Boot, &boot)).await;
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

/// One log line for a store moved aside and replaced.
fn log_recovery(r: &crate::store::Recovery) {
    error!(
        moved_to = %r.moved_to.display(),
        cause = %r.cause,
        "the store was damaged: moved it aside to {} (kept, never deleted) and started a fresh \
         one; carried over {} unsent messages, {} meta entries and {} meter states; seq continues \
         after {} ({}); reported as alarm store_recovered",
        r.moved_to.display(),
        r.messages_salvaged,
        r.meta_salvaged,
        r.meter_states_salvaged,
        r.last_seq,
        r.seq_source.as_str()
    );
}

/// How often the store is checked for damage (`PRAGMA quick_check` on a connection of its
/// own). `AMR_STORE_CHECK_EVERY_S` shortens it for tests.
fn quick_check_every() -> Duration {
    std::env::var("AMR_STORE_CHECK_EVERY_S")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(QUICK_CHECK_EVERY, Duration::from_secs)
}

/// Checks the store for damage — `cause` when a commit already reported it, else what a
/// statement reported since, else (when `probe`) a quick integrity check — and when damaged,
/// moves it aside and continues on a fresh one. Returns the recovery to report.
async fn check_store(
    store: &SharedStore,
    cause: Option<String>,
    probe: bool,
) -> Option<crate::store::Recovery> {
    let st = store.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
        let cause = cause
            .or_else(|| s.damage_seen())
            .or_else(|| probe.then(|| s.quick_check().err()).flatten())?;
        Some(s.recover(&cause).map_err(|e| (cause, e)))
    })
    .await
    .ok()
    .flatten()?;
    match outcome {
        Ok(r) => {
            log_recovery(&r);
            Some(r)
        }
        Err((cause, e)) => {
            error!(cause = %cause, error = %e, "the store is damaged and could not be replaced");
            None
        }
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

/// Why [`commit`] did not store a fold.
enum NotStored {
    /// The store refused it: here it is back, to retry, with the reason.
    Refused(Fold, Refusal),
    /// The commit panicked and took the batch with it; the store may not be used again.
    Lost(String),
}

/// Why the store refused a commit.
#[derive(Debug, Clone, PartialEq)]
enum Refusal {
    /// SQLITE_FULL: the filesystem (or the page limit) is full.
    Full,
    /// The file is damaged ("malformed"): it is moved aside and replaced.
    Damaged(String),
    /// Anything else (an I/O error): retried as it is.
    Other(String),
}

/// Most readings stored in one transaction while a backlog held in memory is written: a long
/// backlog goes in steps of a sane size, not one that needs room for all of it at once.
const MAX_COMMIT_READINGS: usize = 2000;

/// Commits a fold (its batch and what was learned about meters) on a blocking thread. On a full disk it
/// releases the space kept in reserve and checkpoints the WAL, so the next try has room.
async fn commit(store: &SharedStore, fold: Fold, reserve: &Reserve) -> Result<usize, NotStored> {
    let count = fold.batch.readings.len();
    let st = store.clone();
    let reserve = reserve.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut s = st.lock().unwrap();
        failpoint("store-commit");
        let outcome = (|| {
            for (m, l) in &fold.learned {
                s.remember(m, l)?;
            }
            s.commit(&fold.batch)
        })();
        match outcome {
            Ok(_) => Ok(()),
            Err(e) => {
                // ENOSPC is SQLITE_FULL mostly, but an I/O error in some places: a filesystem
                // with no room left is a full disk whatever SQLite called it.
                let no_room = || {
                    let dir = s.path().parent().unwrap_or(std::path::Path::new("."));
                    crate::store::filesystem_space(dir).is_some_and(|(_, free)| free < 64 * 1024)
                };
                let why = if e.is_full() || (!e.is_damage() && no_room()) {
                    // Make room: the reserve goes, the WAL is checkpointed and cut back, and
                    // history beyond the bounds is pruned.
                    reserve.release();
                    s.checkpoint();
                    let _ = s.prune(now_ms());
                    Refusal::Full
                } else if e.is_damage() {
                    Refusal::Damaged(e.to_string())
                } else {
                    Refusal::Other(e.to_string())
                };
                Err(Box::new((why, fold)))
            }
        }
    })
    .await;
    match result {
        Ok(Ok(())) => Ok(count),
        Ok(Err(refused)) => {
            let (why, fold) = *refused;
            Err(NotStored::Refused(fold, why))
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

/// How often a lasting store refusal is summarised in the log.
const TROUBLE_SUMMARY_EVERY: Duration = Duration::from_secs(600);
/// How long the store must take every batch before a refusal counts as over: a disk that
/// frees a little and fills again is one condition, not a flapping alarm.
const TROUBLE_SETTLE: Duration = Duration::from_secs(30);

/// A lasting refusal of the store (a full disk, an I/O error), for one warning when it starts,
/// a summary every [`TROUBLE_SUMMARY_EVERY`] while it lasts and a note when it ends — not one
/// line per batch.
struct Trouble {
    full: bool,
    since: tokio::time::Instant,
    since_ms: i64,
    last_summary: tokio::time::Instant,
    refusals: u64,
    last_error: String,
    /// Since when everything held is stored (the condition ends after [`TROUBLE_SETTLE`]).
    drained_at: Option<tokio::time::Instant>,
}

/// The store writer's view of the store: what waits in memory and how the store is doing.
struct StoreWatch {
    held: Held,
    trouble: Option<Trouble>,
    reserve: Reserve,
    /// Shed counts already logged.
    shed_logged: Shed,
}

impl StoreWatch {
    /// The store refused a fold: logs when the condition starts or a summary is due. Returns
    /// true when a full disk started now (raise `disk_full`).
    fn refused(&mut self, why: &Refusal) -> bool {
        let (full, text) = match why {
            Refusal::Full => (true, "disk full".to_string()),
            Refusal::Damaged(e) | Refusal::Other(e) => (false, e.clone()),
        };
        let now = tokio::time::Instant::now();
        match &mut self.trouble {
            Some(t) if t.full == full => {
                t.refusals += 1;
                t.drained_at = None;
                t.last_error = text;
                if t.last_summary.elapsed() >= TROUBLE_SUMMARY_EVERY {
                    t.last_summary = now;
                    warn!(
                        "the store still refuses batches ({}) after {} s: {} refusals, {} readings \
                         held in memory, {} instantaneous values and {} readings shed so far",
                        t.last_error,
                        t.since.elapsed().as_secs(),
                        t.refusals,
                        self.held.readings(),
                        self.held.shed().instantaneous_values,
                        self.held.shed().readings
                    );
                }
                false
            }
            _ => {
                if full {
                    warn!(
                        "the store's filesystem is full: readings are held in memory (bounded; \
                         instantaneous values are shed first, energy registers last) and stored \
                         when there is room; released the space kept in reserve; free space on \
                         the data_dir filesystem or lower [store] max_size_mb"
                    );
                } else {
                    warn!(
                        error = %text,
                        "the store refuses batches: readings are held in memory (bounded) and \
                         retried"
                    );
                }
                self.trouble = Some(Trouble {
                    full,
                    since: now,
                    since_ms: now_ms(),
                    last_summary: now,
                    refusals: 1,
                    last_error: text,
                    drained_at: None,
                });
                full
            }
        }
    }

    /// Everything held was stored: a condition ends once that has lasted [`TROUBLE_SETTLE`].
    /// Returns the details when a full disk ended (clear `disk_full`).
    fn drained(&mut self) -> Option<serde_json::Value> {
        let t = self.trouble.as_mut()?;
        let since = *t.drained_at.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() < TROUBLE_SETTLE {
            return None;
        }
        let t = self.trouble.take()?;
        let shed = self.held.shed();
        info!(
            "the store accepts batches again after {} s ({} refusals); everything held in memory \
             is stored ({} instantaneous values and {} readings shed in all)",
            t.since.elapsed().as_secs(),
            t.refusals,
            shed.instantaneous_values,
            shed.readings
        );
        t.full.then(|| {
            serde_json::json!({
                "since": crate::clock::rfc3339_ms(t.since_ms),
                "refusals": t.refusals,
                "instantaneous_values_shed": shed.instantaneous_values,
                "readings_shed": shed.readings,
            })
        })
    }

    /// Logs what shedding dropped since the last time (one line per shedding round).
    fn log_shed(&mut self) {
        let shed = self.held.shed();
        if shed != self.shed_logged {
            warn!(
                instantaneous_values =
                    shed.instantaneous_values - self.shed_logged.instantaneous_values,
                readings = shed.readings - self.shed_logged.readings,
                "memory bound reached while the store refuses batches: shed the oldest \
                 instantaneous values (and, beyond that, whole oldest readings); {} values \
                 and {} readings shed so far",
                shed.instantaneous_values,
                shed.readings
            );
            self.shed_logged = shed;
        }
    }
}

/// What a pruning of the store deleted, or why it stopped.
type PruneOutcome = Result<crate::store::PruneReport, crate::store::StoreError>;

/// Prunes the store ([`Store::prune_step`]) one short transaction at a time, each taking the
/// store's lock for itself, so the writer's commits and the publisher's reads and deletes go on
/// between the steps: a store far over its bound at start (a lowered bound, a long outage) is
/// brought under it while the backlog already drains. Logs the steps when it took long.
async fn prune_in_steps(store: SharedStore) -> PruneOutcome {
    let started = tokio::time::Instant::now();
    let mut pruning = crate::store::Pruning::new(now_ms());
    let mut over = false;
    while !pruning.is_done() {
        let st = store.clone();
        let (step, back) = tokio::task::spawn_blocking(move || {
            let step = st
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .prune_step(&mut pruning);
            (step, pruning)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        pruning = back;
        step?;
        if pruning.found_over_bound() && !over {
            over = true;
            info!("store over its bound ([store] max_size_mb): pruning in steps while publishing");
        }
        tokio::task::yield_now().await;
    }
    if over || started.elapsed() >= Duration::from_secs(1) {
        info!(
            steps = pruning.steps(),
            "store pruned in {} steps over {:.1} s",
            pruning.steps(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(pruning.into_report())
}

/// Folds bus events, and a tick every second, into store transactions: history, outbox
/// messages, learned limits and the analytics' output. What the store refuses waits in memory
/// (bounded, [`Held`]) and is stored oldest first when it has room again. Runs until every bus
/// has stopped and the channel is drained, then saves the analytics' state one last time.
#[allow(clippy::too_many_arguments)]
async fn write_events(
    mut writer: Writer,
    store: SharedStore,
    mut events: mpsc::Receiver<BusEvent>,
    wake: Arc<Notify>,
    uplink: watch::Receiver<UplinkState>,
    live: Option<watch::Sender<GatewayState>>,
    heartbeat: Heartbeat,
    tally: health::Tally,
    mut clock_watch: health::ClockWatch,
    mut certificates: CertificateWatch,
) -> Result<(), String> {
    let mut last_clock_check: Option<tokio::time::Instant> = None;
    // The space kept in reserve lives next to the store (docs/reliability.md).
    let (reserve, window) = {
        let s = store.lock().unwrap_or_else(|p| p.into_inner());
        (
            Reserve::new(s.path().parent().unwrap_or(std::path::Path::new("."))),
            Duration::from_millis(s.settings().commit_window_ms),
        )
    };
    let mut readings_stored = 0u64;
    let mut last_prune = tokio::time::Instant::now() - PRUNE_EVERY;
    let mut pruning: Option<tokio::task::JoinHandle<PruneOutcome>> = None;
    let check_every = quick_check_every();
    let mut last_check = tokio::time::Instant::now();
    let mut buf = Vec::with_capacity(MAX_BATCH);
    let mut watch = StoreWatch {
        held: Held::new(MAX_HELD_VALUES),
        trouble: None,
        reserve,
        shed_logged: Shed::default(),
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = tokio::time::Instant::now();
    loop {
        let open = tokio::select! {
            n = events.recv_many(&mut buf, MAX_BATCH) => n > 0,
            _ = tick.tick() => true,
        };
        if !open {
            break;
        }
        // What arrives within `[store] commit_window_ms` of the first event goes in the same
        // transaction: one commit (and one fsync) for many readings.
        if !buf.is_empty() && !window.is_zero() {
            let deadline = tokio::time::Instant::now() + window;
            while buf.len() < MAX_BATCH {
                let room = MAX_BATCH - buf.len();
                let more = events.recv_many(&mut buf, room);
                match tokio::time::timeout_at(deadline, more).await {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
            tick.reset();
        }
        failpoint("writer");
        // The clock, at most once a second: a change of sanity goes in before the readings it
        // applies to (they are marked from now on).
        if last_clock_check.is_none_or(|t| t.elapsed() >= TICK) {
            last_clock_check = Some(tokio::time::Instant::now());
            let now = now_ms();
            let sync = crate::clock::sync_state();
            if let Some((sane, details)) = clock_watch.check(now, crate::clock::boot_ms(), &sync) {
                watch.held.push(Fold {
                    batch: writer.clock(sane, details, now),
                    learned: Vec::new(),
                });
            }
        }
        for batch in certificates.check(&mut writer, now_ms()) {
            watch.held.push(Fold {
                batch,
                learned: Vec::new(),
            });
        }
        tally.observe(&buf);
        // The tick goes with the events' fold only under a steady stream of events (readings
        // spread over the minute, as RTU buses deliver them); after a burst (Modbus TCP
        // buses deliver a whole area's readings within a second or two) it comes by itself
        // once the bus is quiet, in a transaction of its own: what the engines then emit and
        // their snapshots never sit in memory beside the burst's readings and messages (at a
        // loss interval's first close after a start, every meter's part of two engines, 1.3 MB
        // of text with 1000 meters). Under a stream each transaction holds one commit
        // window's readings, and one transaction rather than two keeps the bytes written
        // per reading down (docs/benchmarks.md (h)).
        let quiet = buf.is_empty();
        let fold = if quiet || last_tick.elapsed() < TICK_DELAY_MAX {
            writer.fold_events(buf.drain(..))
        } else {
            last_tick = tokio::time::Instant::now();
            writer.fold(buf.drain(..), now_ms())
        };
        if !fold.batch.is_empty() || !fold.learned.is_empty() {
            watch.held.push(fold);
            watch.log_shed();
        }
        // Damage a statement reported (the uplink's reads too), or found by the periodic check.
        let probe = last_check.elapsed() >= check_every;
        if probe {
            last_check = tokio::time::Instant::now();
        }
        if let Some(r) = check_store(&store, None, probe).await {
            watch.held.push_front(Fold {
                batch: writer.store_recovered(&r, now_ms()),
                learned: Vec::new(),
            });
        }
        readings_stored += store_held(&store, &mut watch, &mut writer, &wake).await?;
        // The quiet bus's tick, once what came before is stored.
        if quiet {
            last_tick = tokio::time::Instant::now();
            let batch = writer.tick(now_ms());
            if !batch.is_empty() {
                watch.held.push(Fold {
                    batch,
                    learned: Vec::new(),
                });
                watch.log_shed();
                readings_stored += store_held(&store, &mut watch, &mut writer, &wake).await?;
            }
        }
        // Pruning runs beside the writer, one short step at a time (`prune_in_steps`): the
        // writer's commits and the publisher go on between the steps.
        if pruning.is_none() && last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = tokio::time::Instant::now();
            pruning = Some(tokio::spawn(prune_in_steps(store.clone())));
        }
        if pruning.as_ref().is_some_and(|t| t.is_finished()) {
            let report = pruning.take().expect("a pruning task").await;
            match report {
                Ok(Ok(r)) => {
                    if r.dropped_messages > 0 {
                        warn!(
                            dropped = r.dropped_messages,
                            "store full ([store] max_size_mb): dropped the {} oldest unsent messages \
                             (real-time ones before billing data)",
                            r.dropped_messages
                        );
                    }
                    if r.dropped_records > 0 {
                        warn!(
                            dropped = r.dropped_records,
                            "store full ([store] max_size_mb): deleted the {} oldest kept records \
                             (alarm events and voltage days before curves, loss and freezes)",
                            r.dropped_records
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
                Ok(Err(e)) => debug!(error = %e, "pruning the store failed"),
                Err(e) => return Err(task_failure("pruning the store", e)),
            }
            if watch.trouble.is_none() && !watch.reserve.held() {
                let reserve = watch.reserve.clone();
                let _ = tokio::task::spawn_blocking(move || reserve.restore()).await;
            }
        }
        tally.set_readings_dropped(watch.held.shed().readings);
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
    if let Some(task) = pruning.take() {
        // The step under way ends with its transaction; the rest waits for the next start.
        task.abort();
        let _ = task.await;
    }
    watch.held.push(Fold {
        batch: writer.finish(now_ms()),
        learned: Vec::new(),
    });
    store_held(&store, &mut watch, &mut writer, &wake).await?;
    if !watch.held.is_empty() {
        let lost = format!(
            "the store refused the last batches at shutdown ({}); {} readings held in memory were \
             not stored",
            watch
                .trouble
                .as_ref()
                .map_or("unknown error", |t| t.last_error.as_str()),
            watch.held.readings()
        );
        error!("{lost}");
        return Err(lost);
    }
    Ok(())
}

/// The certificates of the MQTT link (`[mqtt] client_cert_file` and the CA in `ca_file`),
/// checked at start and then daily: `certificate_expiry` raised `cert_expiry_warn_days` before
/// one expires (one warning line a day while it lasts), cleared once a renewed one is in place.
struct CertificateWatch {
    mqtt: crate::uplink::MqttSettings,
    last: Option<tokio::time::Instant>,
}

impl CertificateWatch {
    fn new(mqtt: &crate::uplink::MqttSettings) -> CertificateWatch {
        CertificateWatch {
            mqtt: mqtt.clone(),
            last: None,
        }
    }

    /// When a check is due (the first call, then daily): the batches raising or clearing the
    /// alarm for each watched key (empty when nothing changed).
    fn check(&mut self, writer: &mut Writer, now: i64) -> Vec<crate::store::Batch> {
        if self
            .last
            .is_some_and(|t| t.elapsed() < CERTIFICATE_CHECK_EVERY)
        {
            return Vec::new();
        }
        self.last = Some(tokio::time::Instant::now());
        let mut batches = Vec::new();
        for (key, verdict) in crate::uplink::tls::expiry_checks(&self.mqtt, now) {
            let batch = match verdict {
                crate::uplink::tls::Expiry::Fine(details) => {
                    writer.certificate(key, None, details, now)
                }
                crate::uplink::tls::Expiry::Expiring { days_left, details } => {
                    let (file, subject, not_after) = (
                        details["file"].as_str().unwrap_or_default().to_string(),
                        details["certificate"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        details["not_after"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    );
                    if days_left > 0 {
                        warn!(
                            "[mqtt] {key} {file}: certificate {subject} expires {not_after} \
                             ({days_left} days left); install a renewed one (alarm \
                             certificate_expiry)"
                        );
                    } else {
                        warn!(
                            "[mqtt] {key} {file}: certificate {subject} EXPIRED {not_after}; \
                             the broker will refuse the link until a renewed one is installed \
                             (alarm certificate_expiry)"
                        );
                    }
                    writer.certificate(key, Some(days_left), details, now)
                }
                crate::uplink::tls::Expiry::Unknown(why) => {
                    debug!("certificate_expiry not judged: {why}");
                    continue;
                }
            };
            if !batch.is_empty() {
                batches.push(batch);
            }
        }
        batches
    }
}

/// Stores what is held, oldest first, until the store refuses; handles the refusal (a
/// damaged store is replaced, a full disk raises `disk_full`) and the end of a condition.
/// Returns the readings stored.
async fn store_held(
    store: &SharedStore,
    watch: &mut StoreWatch,
    writer: &mut Writer,
    wake: &Notify,
) -> Result<u64, String> {
    let mut stored = 0u64;
    let mut recovered_once = false;
    while let Some(fold) = watch.held.take_front(MAX_COMMIT_READINGS) {
        match commit(store, fold, &watch.reserve).await {
            Ok(n) => {
                stored += n as u64;
                wake.notify_one();
            }
            Err(NotStored::Lost(lost)) => return Err(lost),
            Err(NotStored::Refused(fold, why)) => {
                watch.held.push_front(fold);
                if let Refusal::Damaged(cause) = &why
                    && !recovered_once
                {
                    recovered_once = true;
                    if let Some(r) = check_store(store, Some(cause.clone()), false).await {
                        watch.held.push_front(Fold {
                            batch: writer.store_recovered(&r, now_ms()),
                            learned: Vec::new(),
                        });
                        continue;
                    }
                }
                if watch.refused(&why) {
                    // The alarm goes first: with the reserve released it has room.
                    let raise = writer.disk_full(
                        true,
                        serde_json::json!({"data_dir": watch.reserve_dir()}),
                        now_ms(),
                    );
                    if let Ok(n) = commit(
                        store,
                        Fold {
                            batch: raise.clone(),
                            learned: Vec::new(),
                        },
                        &watch.reserve,
                    )
                    .await
                    {
                        stored += n as u64;
                        wake.notify_one();
                    } else {
                        watch.held.push_front(Fold {
                            batch: raise,
                            learned: Vec::new(),
                        });
                    }
                }
                return Ok(stored);
            }
        }
    }
    if let Some(details) = watch.drained() {
        watch.held.push(Fold {
            batch: writer.disk_full(false, details, now_ms()),
            learned: Vec::new(),
        });
        if let Some(fold) = watch.held.take_front(MAX_COMMIT_READINGS) {
            match commit(store, fold, &watch.reserve).await {
                Ok(_) => wake.notify_one(),
                Err(NotStored::Lost(lost)) => return Err(lost),
                Err(NotStored::Refused(fold, _)) => watch.held.push_front(fold),
            }
        }
        let reserve = watch.reserve.clone();
        let _ = tokio::task::spawn_blocking(move || reserve.restore()).await;
    }
    Ok(stored)
}

impl StoreWatch {
    /// The data directory (where the reserve lives), for the alarm's details.
    fn reserve_dir(&self) -> String {
        self.reserve.dir().display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Reading;
    use crate::store::{Batch, MetaKey};

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

    /// A clock before the build date: `clock_unsynchronized` raised and the readings marked
    /// while it lasts; cleared, and the marks gone, once the clock is sane.
    #[test]
    fn an_unsane_clock_raises_its_alarm_and_marks_the_readings() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::load_str(CONFIG, &dir.path().join("amr.toml")).expect("config");
        let store = Store::open(&dir.path().join("db"), &config.store).unwrap();
        let topics = Topics::new("amr", "gw");
        let (mut writer, _) =
            Writer::start(&config.pipeline_settings(), topics, &store, 5_000).unwrap();
        let sync = crate::clock::ClockSync {
            synchronized: false,
            source: crate::clock::SyncSource::Unknown,
            est_error_us: None,
        };
        let mut watch = health::ClockWatch::new(false);
        // A box without a real-time clock: 1970.
        let (sane, details) = watch.check(5_000, 5_000, &sync).unwrap();
        let batch = writer.clock(sane, details, 5_000);
        let raised = batch
            .messages
            .iter()
            .find(|m| m.topic == "amr/gw/alarm/clock_unsynchronized/gw")
            .expect("alarm raised");
        assert_eq!(raised.payload["state"], "raised", "{}", raised.payload);
        let reading = |ts_ms| {
            BusEvent::Reading(Reading {
                meter: "s".into(),
                ts_ms,
                values: [("energy_import_kwh".to_string(), 1.0)].into(),
            })
        };
        let payload = |fold: &Fold| {
            fold.batch
                .messages
                .iter()
                .find(|m| m.topic == "amr/gw/reading/s")
                .expect("reading")
                .payload
                .clone()
        };
        let fold = writer.fold([reading(6_000)], 6_000);
        assert_eq!(payload(&fold)["clock"], "unsynchronized");
        // NTP sets the clock.
        let now = crate::clock::BUILD_DATE_MS + 60_000;
        let (sane, details) = watch.check(now, 7_000, &sync).unwrap();
        assert!(sane);
        let batch = writer.clock(sane, details, now);
        let cleared = batch
            .messages
            .iter()
            .find(|m| m.topic == "amr/gw/alarm/clock_unsynchronized/gw")
            .expect("alarm cleared");
        assert_eq!(cleared.payload["state"], "cleared", "{}", cleared.payload);
        let fold = writer.fold([reading(now + 1_000)], now + 1_000);
        assert!(payload(&fold).get("clock").is_none());
    }

    /// The store writer task over `store` (no uplink, no watchdog), and the sender of its
    /// bus events.
    fn spawn_writer(
        writer: Writer,
        store: &SharedStore,
        config: &crate::config::Config,
        live: Option<watch::Sender<GatewayState>>,
    ) -> (
        mpsc::Sender<BusEvent>,
        tokio::task::JoinHandle<Result<(), String>>,
    ) {
        let (tx, rx) = mpsc::channel(16);
        let (_up_tx, up_rx) = watch::channel(UplinkState::default());
        let task = tokio::spawn(write_events(
            writer,
            store.clone(),
            rx,
            Arc::new(Notify::new()),
            up_rx,
            live,
            Heartbeat::unwatched(),
            health::Tally::default(),
            health::ClockWatch::new(false),
            CertificateWatch::new(&config.mqtt),
        ));
        (tx, task)
    }

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
        let (live_tx, mut live_rx) = watch::channel(GatewayState::default());
        let (tx, task) = spawn_writer(writer, &store, &config, Some(live_tx));
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

    /// Under a steady stream of readings the bus is never quiet for a second: the analytics
    /// still tick (with the events, at least every `TICK_DELAY_MAX`), so the heartbeat, loss
    /// intervals and alarm hold times go on.
    #[tokio::test]
    async fn the_analytics_tick_under_a_steady_stream_of_readings() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{CONFIG}[store]\ncommit_window_ms = 100\n");
        let config = crate::config::load_str(&text, &dir.path().join("amr.toml")).expect("config");
        let mut store = Store::open(&dir.path().join("db"), &config.store).unwrap();
        let start = now_ms();
        let (writer, batch) = Writer::start(
            &config.pipeline_settings(),
            Topics::new("amr", "gw"),
            &store,
            start,
        )
        .unwrap();
        store.commit(&batch).unwrap();
        let store: SharedStore = Arc::new(std::sync::Mutex::new(store));
        let (tx, task) = spawn_writer(writer, &store, &config, None);
        let alive = || -> i64 {
            let s = store.lock().unwrap();
            s.meta(&MetaKey::LastAlive)
                .unwrap()
                .map_or(0, |v| v.parse().unwrap())
        };
        // A reading every 50 ms for 1.5 × TICK_DELAY_MAX, the heartbeat read while they come.
        let streamed = TICK_DELAY_MAX.as_millis() as i64 * 3 / 2;
        let mut sent = 0;
        while now_ms() - start < streamed {
            let values = [("energy_import_kwh".to_string(), 10.0 + sent as f64)].into();
            tx.send(BusEvent::Reading(Reading {
                meter: "s".into(),
                ts_ms: now_ms(),
                values,
            }))
            .await
            .unwrap();
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let during = alive();
        drop(tx);
        task.await.unwrap().expect("the writer stops in order");
        assert!(
            during >= start + TICK_DELAY_MAX.as_millis() as i64 - 1_000,
            "the heartbeat went on during the stream: {} ms after the start",
            during - start
        );
        let s = store.lock().unwrap();
        assert_eq!(s.history("s", 0, i64::MAX).unwrap().len(), sent);
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
        let reserve = Reserve::new(dir.path());
        let fold = Fold {
            batch,
            learned: vec![("s".into(), crate::model::Learned::BlockLimit(40))],
        };
        let Err(NotStored::Refused(kept, Refusal::Full)) = commit(&store, fold, &reserve).await
        else {
            panic!("the full store refuses the batch and hands it back");
        };
        assert_eq!(kept.batch.readings.len(), 3000);
        store
            .lock()
            .unwrap()
            .connection()
            .pragma_update(None, "max_page_count", 1_000_000)
            .unwrap();
        assert!(commit(&store, kept, &reserve).await.is_ok());
        let s = store.lock().unwrap();
        assert_eq!(s.history("s", 0, i64::MAX).unwrap().len(), 3000);
        assert_eq!(s.block_limits().unwrap().get("s"), Some(&40));
    }

    /// A store far over its bound at start is pruned in steps beside the publisher and the
    /// writer: the oldest rows are read (to publish) and new batches committed before the
    /// pruning ends, and it ends under the bound with the oldest unsent messages dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_over_its_bound_is_pruned_while_the_backlog_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::store::StoreSettings {
            history_days: 35,
            max_size_mb: 1,
            commit_window_ms: 0,
        };
        let path = dir.path().join("db");
        let message = |n: u64| crate::store::Message {
            topic: format!("amr/gw/reading/m{}", n % 50),
            payload: serde_json::json!({"n": n, "pad": "7".repeat(200)}).into(),
            qos: 1,
            retain: false,
            sequenced: true,
        };
        {
            let mut s = Store::open(&path, &settings).unwrap();
            for k in 0..8 {
                let messages = (k * 5000..(k + 1) * 5000).map(message).collect();
                s.commit(&Batch {
                    messages,
                    ..Default::default()
                })
                .unwrap();
            }
            assert!(s.used_bytes().unwrap() > 8 * 1024 * 1024);
        }
        let store = crate::store::open_shared(&path, &settings).unwrap();
        let pruning = tokio::spawn(prune_in_steps(store.clone()));
        let (mut reads_during, mut commits_during, mut n) = (0, 0, 40_000);
        while !pruning.is_finished() {
            let rows = crate::store::with_store(&store, |s| s.pending(0, 64).unwrap()).await;
            assert!(!rows.is_empty());
            let batch = Batch {
                messages: vec![message(n)],
                ..Default::default()
            };
            n += 1;
            crate::store::with_store(&store, move |s| s.commit(&batch).unwrap()).await;
            if !pruning.is_finished() {
                reads_during += 1;
                commits_during += 1;
            }
        }
        let report = pruning.await.unwrap().unwrap();
        assert!(
            reads_during > 0 && commits_during > 0,
            "the publisher and the writer used the store while it was pruned"
        );
        assert!(report.used_bytes <= 1024 * 1024, "{report:?}");
        assert!(report.dropped_messages > 30_000, "{report:?}");
        let s = store.lock().unwrap();
        let seqs: Vec<u64> = s
            .pending(0, usize::MAX)
            .unwrap()
            .iter()
            .map(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        // The oldest went; the newest — those committed during the pruning too — stayed.
        assert_eq!(*seqs.last().unwrap(), n);
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "a contiguous tail"
        );
        assert_eq!(seqs.len() + report.dropped_messages, n as usize);
    }
}
