//! The scheduler of one bus, the same for every protocol: picks the meter that is due, has the
//! bus's [`Driver`] poll it (or probe it while offline), keeps its health, probes offline
//! meters with growing intervals within the bus's [`ProbeBudget`], re-opens a broken link, and
//! reports readings, meter states and what the driver learned as [`BusEvent`]s.
//!
//! Energy first and the learning of what a meter accepts are the driver's (for Modbus see
//! `super::modbus`); when a meter is polled, and what its health says, are decided here.

use super::budget::ProbeBudget;
use super::driver::{Driver, driver_for};
use super::health::OfflinePolicy;
use super::on_demand::{OnDemand, ReadRequest};
use super::time_sync::{SyncDecision, daily_sync, may_sync};
use super::{BusSettings, MeterSettings};
use crate::clock::now_ms;
use crate::liveness::Heartbeat;
use crate::model::{
    BusEvent, HealthChange, Learned, MeterHealth, MeterId, MeterItems, MeterStatus,
};
use crate::shutdown::Shutdown;

/// Longest a bus waits for its next poll without telling the watchdog it is alive.
const BEAT_EVERY: Duration = Duration::from_secs(5);
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// One meter as the scheduler sees it.
struct MeterSlot {
    settings: MeterSettings,
    interval: Duration,
    next_due: Instant,
    health: MeterHealth,
    polls_since_state: u32,
    /// Probe at the next turn without waiting for the probe budget: its bus (or its device)
    /// just came back, so it most likely answers.
    probe_now: bool,
    /// When the meter's own items (clock, status word, counters) are next read.
    items_due: Instant,
    /// What the meter last said about itself.
    items: Option<MeterItems>,
}

impl MeterSlot {
    /// The meter's state as the bus reports it.
    fn status(&self, bus: &str, change: HealthChange, ts_ms: i64) -> MeterStatus {
        MeterStatus {
            meter: self.settings.id.clone(),
            bus: bus.to_string(),
            unit: self.settings.unit,
            address: self.settings.address.clone(),
            health: self.health.clone(),
            change,
            ts_ms,
            items: self.items.clone().map(Box::new),
        }
    }

    /// How the meter is reached on its bus, for log lines: `address 000000000001` (DL/T 645)
    /// or `unit 5` (Modbus).
    fn at(&self) -> String {
        match (&self.settings.address, self.settings.unit) {
            (Some(a), _) => format!("address {a}"),
            (None, Some(u)) => format!("unit {u}"),
            (None, None) => "no address".to_string(),
        }
    }
}

/// "Not in this run": when a bus without `items_interval` next reads its meters' items (unless
/// a time sync asks).
const NEVER: Duration = Duration::from_secs(10 * 365 * 86_400);

/// A daily time sync held back by an unsynchronised gateway clock is tried again this often.
const SYNC_RECHECK: Duration = Duration::from_secs(600);

/// Meter state is re-sent after this many polls even without a change.
const STATE_EVERY_POLLS: u32 = 10;

/// Longest wait between attempts to open a bus's device: a serial adapter that comes back is
/// used again within this time.
const MAX_OPEN_BACKOFF: Duration = Duration::from_secs(10);

/// Runs the bus until `shutdown` says stop. `learned` holds what was learned about its meters
/// earlier (e.g. block limits from the store, [`Learned::from_block_limits`]); the driver is
/// picked by the bus's protocol ([`driver_for`]).
pub async fn run_bus(
    bus: BusSettings,
    meters: Vec<MeterSettings>,
    learned: Vec<(MeterId, Learned)>,
    policy: OfflinePolicy,
    events: mpsc::Sender<BusEvent>,
    shutdown: Shutdown,
    heartbeat: Heartbeat,
) {
    // No reads on demand: a channel nobody can send on.
    let (_, requests) = mpsc::channel(1);
    run_bus_serving(
        bus, meters, learned, policy, events, requests, shutdown, heartbeat,
    )
    .await;
}

/// [`run_bus`] that also serves reads on demand ([`ReadRequest`]): the meters a request names
/// are made due now and read between scheduled polls.
#[allow(clippy::too_many_arguments)]
pub async fn run_bus_serving(
    bus: BusSettings,
    meters: Vec<MeterSettings>,
    learned: Vec<(MeterId, Learned)>,
    policy: OfflinePolicy,
    events: mpsc::Sender<BusEvent>,
    requests: mpsc::Receiver<ReadRequest>,
    shutdown: Shutdown,
    heartbeat: Heartbeat,
) {
    if meters.is_empty() {
        info!(bus = %bus.name, "bus has no meters; not opening it");
        return;
    }
    let driver = match driver_for(&bus, &meters, &learned, &policy) {
        Ok(d) => d,
        Err(e) => {
            error!(bus = %bus.name, error = %e, "cannot poll this bus");
            return;
        }
    };
    let requests = Some(requests);
    run_with(
        driver, bus, meters, policy, events, requests, shutdown, heartbeat,
    )
    .await;
}

/// [`run_bus`] with its driver.
#[allow(clippy::too_many_arguments)]
async fn run_with(
    mut driver: Box<dyn Driver>,
    bus: BusSettings,
    meters: Vec<MeterSettings>,
    policy: OfflinePolicy,
    events: mpsc::Sender<BusEvent>,
    requests: Option<mpsc::Receiver<ReadRequest>>,
    mut shutdown: Shutdown,
    heartbeat: Heartbeat,
) {
    let start = Instant::now();
    let n = meters.len().max(1) as u32;
    let mut slots: Vec<MeterSlot> = meters
        .into_iter()
        .enumerate()
        .map(|(i, settings)| {
            let interval = settings.poll_interval.unwrap_or(bus.poll_interval);
            // Spread first polls over a fraction of a second so that the bus starts at once but
            // meters keep a stable order.
            let next_due = start + Duration::from_millis(i as u64 * 10 / n as u64);
            MeterSlot {
                settings,
                interval: interval.max(Duration::from_secs(1)),
                next_due,
                health: MeterHealth::new(&policy),
                polls_since_state: 0,
                probe_now: false,
                items_due: if bus.time_sync.items_interval.is_some() {
                    next_due
                } else {
                    start + NEVER
                },
                items: None,
            }
        })
        .collect();
    // When the daily broadcast time sync was last sent.
    let mut last_sync_ms: Option<i64> = None;
    // Not before: the gateway's clock was found unsynchronised.
    let mut sync_check_at = start;
    // The local day the held-back sync was last warned about.
    let mut sync_warned_day: Option<i64> = None;
    let mut budget = ProbeBudget::new(&policy, bus.timeout);
    let mut open = false;
    let mut open_backoff = Duration::from_secs(1);
    // Since when the device cannot be opened (one warning when it starts, a note when it ends).
    let mut device_lost_since: Option<Instant> = None;
    let mut last: Option<usize> = None;
    let ids: Vec<MeterId> = slots.iter().map(|s| s.settings.id.clone()).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut on_demand = OnDemand::new(requests);

    loop {
        // Alive: the watchdog hears from this bus at least every BEAT_EVERY, polling or not.
        heartbeat.beat();
        if shutdown.is_stopping() {
            break;
        }
        // Reads on demand: their meters are due now (after those already waiting longer).
        for idx in on_demand.take_new(&ids) {
            slots[idx].next_due = slots[idx].next_due.min(Instant::now());
        }
        if !open {
            match driver.open().await {
                Ok(()) => {
                    open = true;
                    open_backoff = Duration::from_secs(1);
                    if let Some(since) = device_lost_since.take() {
                        info!(bus = %bus.name, endpoint = %bus.endpoint,
                            "bus open again after {} s; probing its meters now",
                            since.elapsed().as_secs());
                        // The device is back: its meters most likely answer.
                        let now_i = Instant::now();
                        for slot in slots.iter_mut().filter(|s| s.health.is_offline()) {
                            slot.next_due = now_i;
                            slot.probe_now = true;
                        }
                    } else {
                        info!(bus = %bus.name, endpoint = %bus.endpoint, "bus open");
                    }
                }
                Err(e) => {
                    let error = format!("bus device {} cannot be opened: {e}", bus.endpoint);
                    if device_lost_since.is_none() {
                        device_lost_since = Some(Instant::now());
                        warn!(bus = %bus.name, endpoint = %bus.endpoint, error = %e,
                            "cannot open bus; its meters are offline; retrying at least every \
                             {} s", MAX_OPEN_BACKOFF.as_secs());
                    } else {
                        debug!(bus = %bus.name, endpoint = %bus.endpoint, error = %e,
                            "cannot open bus; retrying in {} s", open_backoff.as_secs());
                    }
                    // A meter behind a device that is not there is offline: said upstream.
                    if !mark_link_lost(&mut slots, &bus.name, &error, &policy, &events).await {
                        break;
                    }
                    if sleep_beating(&mut shutdown, &heartbeat, open_backoff).await {
                        break;
                    }
                    open_backoff = (open_backoff * 2).min(MAX_OPEN_BACKOFF);
                    continue;
                }
            }
        }
        // The daily broadcast time sync, between two transactions.
        let now = now_ms();
        let ts = &bus.time_sync;
        if ts.at_minute.is_some()
            && Instant::now() >= sync_check_at
            && daily_sync(ts.at_minute, &ts.zone, now, last_sync_ms, true) == SyncDecision::Now
        {
            // Asked only when otherwise due: the check may read a file.
            match daily_sync(ts.at_minute, &ts.zone, now, None, (ts.clock_synchronised)()) {
                SyncDecision::Wait(why) => {
                    // Said once a day; the checks in between are quiet.
                    let day = ts.zone.day_start_ms(now);
                    if sync_warned_day != Some(day) {
                        sync_warned_day = Some(day);
                        warn!(bus = %bus.name, "daily meter time sync not sent yet: {why}; \
                            checking again every {} minutes", SYNC_RECHECK.as_secs() / 60);
                    } else {
                        debug!(bus = %bus.name, "daily meter time sync still held back: {why}");
                    }
                    sync_check_at = Instant::now() + SYNC_RECHECK;
                }
                SyncDecision::Now => {
                    last_sync_ms = Some(now);
                    match driver.time_sync(now).await {
                        Ok(()) => {
                            info!(bus = %bus.name, "broadcast time sync sent; reading the meters' clocks");
                            // Meters that took it show it at their next poll.
                            let soon = Instant::now() + Duration::from_secs(2);
                            for slot in &mut slots {
                                slot.items_due = soon;
                            }
                        }
                        Err(e) => warn!(bus = %bus.name, error = %e, "broadcast time sync failed"),
                    }
                }
            }
        }
        // Time syncs the headend asked for (`time_sync`): now, unless refused.
        for req in on_demand.take_syncs() {
            let now = now_ms();
            let refusal = match may_sync(&ts.zone, now, (ts.clock_synchronised)()) {
                SyncDecision::Wait(why) => Some(format!("time sync refused: {why}")),
                SyncDecision::Now => driver
                    .time_sync(now)
                    .await
                    .err()
                    .map(|e| format!("time sync not sent: {e}")),
            };
            match refusal {
                Some(why) => {
                    info!(bus = %bus.name, "{why}");
                    on_demand.refuse(req, &ids, &why);
                }
                None => {
                    info!(bus = %bus.name, "broadcast time sync sent (headend command); reading the meters' clocks");
                    // The meters take one sync a day: this was today's.
                    last_sync_ms = Some(now);
                    let before: Vec<Option<f64>> = slots
                        .iter()
                        .map(|s| s.items.as_ref().and_then(|i| i.clock_skew_s))
                        .collect();
                    let now_i = Instant::now();
                    for slot in &mut slots {
                        slot.items_due = now_i;
                    }
                    for idx in on_demand.open_synced(req, &ids, before) {
                        slots[idx].next_due = slots[idx].next_due.min(now_i);
                    }
                }
            }
        }
        // Relay orders the headend gave (`relay`): now, between two transactions.
        on_demand.serve_relays(driver.as_mut(), &ids).await;
        // The meter that is due first (ties: configuration order).
        let idx = (0..slots.len()).min_by_key(|&i| slots[i].next_due).unwrap();
        let due = slots[idx].next_due;
        if due > Instant::now() {
            let wake = due.min(Instant::now() + BEAT_EVERY);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = shutdown.wait() => continue,
                _ = on_demand.arrival() => continue,
            }
            if wake < due {
                continue;
            }
        }
        if slots[idx].health.is_offline() && !slots[idx].probe_now {
            // Defer the probe while dead meters have used their share of the bus.
            let now = Instant::now();
            let at = budget.next_probe_at(now, budget.probe_cost());
            if at > now {
                debug!(bus = %bus.name, meter = %slots[idx].settings.id,
                    "probe deferred {} ms: dead meters used their share of the bus",
                    (at - now).as_millis());
                slots[idx].next_due = at;
                continue;
            }
        }
        let pause = driver.switch_pause(last, idx);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        last = Some(idx);
        // Every meter of the bus offline: a silent bus (a cut line, a dead device).
        let bus_silent = slots.iter().all(|s| s.health.is_offline());
        let slot = &mut slots[idx];
        slot.probe_now = false;
        let was_offline = slot.health.is_offline();
        let poll = if was_offline {
            driver.probe(idx).await
        } else {
            driver
                .poll(idx, slot.health.consecutive_failures == 0)
                .await
        };
        if poll.link_broken {
            driver.close();
            open = false;
        }
        if !poll.outcome.answered() {
            budget.book(Instant::now(), poll.latency);
        }
        let meter = &slot.settings.id;
        let at = slot.at();
        for learned in poll.learned {
            let event = BusEvent::Learned {
                meter: meter.clone(),
                learned,
            };
            // A closed channel ends the task below, at the reading or the state.
            let _ = events.send(event).await;
        }
        let now = now_ms();
        let change =
            slot.health
                .record(poll.outcome, poll.latency, now, poll.error.clone(), &policy);
        match change {
            HealthChange::WentOffline => {
                // When the first probe goes out: after the backoff, and not before the probe
                // budget has room for it (the failed polls may have spent it).
                let now_i = Instant::now();
                let earliest = now_i + slot.health.probe_interval;
                let probe_at = budget
                    .next_probe_at(earliest, budget.probe_cost())
                    .max(earliest);
                let wait = probe_at - now_i;
                warn!(
                    bus = %bus.name, meter = %meter, at = %at,
                    error = poll.error.as_deref().unwrap_or(""),
                    "meter offline after {} failed polls; next probe in {} s (at {}), then \
                     less and less often",
                    slot.health.consecutive_failures,
                    wait.as_secs_f64().ceil() as u64,
                    crate::clock::rfc3339_ms(now + wait.as_millis() as i64)
                )
            }
            HealthChange::WentOnline => info!(
                bus = %bus.name, meter = %meter, at = %at, "meter online"
            ),
            HealthChange::None => {
                if let Some(e) = &poll.error {
                    debug!(bus = %bus.name, meter = %meter, at = %at, error = %e, "poll failed");
                }
            }
        }
        // Next due time: keep the meter's phase when online; back off when offline.
        let now_i = Instant::now();
        if was_offline && change == HealthChange::WentOnline {
            // The probe answered: poll it fully right away.
            slot.next_due = now_i;
        } else if slot.health.is_offline() {
            slot.next_due = now_i + slot.health.probe_interval;
        } else {
            slot.next_due += slot.interval;
            if slot.next_due + slot.interval <= now_i {
                // More than an interval behind (a saturated bus, or a stall): forget the missed
                // polls and poll again as soon as the bus is free, after the meters waiting
                // longer. Skipping ahead to the next slot instead would leave the bus idle while
                // every meter is late.
                slot.next_due = now_i;
            }
        }
        if bus_silent && change == HealthChange::WentOnline {
            // A bus that went silent as a whole comes back as a whole: probe the others now,
            // not one backoff at a time.
            info!(bus = %bus.name, meter = %meter, "bus answers again; probing its other meters now");
            for (i, other) in slots.iter_mut().enumerate() {
                if i != idx && other.health.is_offline() {
                    other.next_due = now_i;
                    other.probe_now = true;
                }
            }
        }
        let slot = &mut slots[idx];
        let reading = poll.reading;
        slot.polls_since_state += 1;
        // The meter's own items, every `read_interval_s` (and soon after a time sync).
        let mut items_read = false;
        if open && !slot.health.is_offline() && poll.outcome.answered() && slot.items_due <= now_i {
            slot.items_due = now_i + bus.time_sync.items_interval.unwrap_or(NEVER);
            if let Some(items) = driver.read_items(idx).await {
                if let Some(skew) = items.clock_skew_s {
                    debug!(bus = %bus.name, meter = %slot.settings.id, skew_s = skew, "meter clock read");
                }
                slot.items = Some(items);
                items_read = true;
            }
        }
        // The meter's own daily freezes, once after each local midnight (the driver decides).
        if open && !slot.health.is_offline() && poll.outcome.answered() {
            for f in driver.read_freezes(idx, now_ms()).await {
                let (meter, ts_ms, values) = (slot.settings.id.clone(), f.ts_ms, f.values);
                let _ = events
                    .send(BusEvent::MeterFreeze {
                        meter,
                        ts_ms,
                        values,
                    })
                    .await;
            }
        }
        let skew = items_read
            .then(|| slot.items.as_ref().and_then(|i| i.clock_skew_s))
            .flatten();
        on_demand.polled(
            idx,
            &slot.settings.id,
            reading.as_ref(),
            poll.error.as_deref(),
            skew,
        );
        if let Some(r) = reading
            && events.send(BusEvent::Reading(r)).await.is_err()
        {
            break;
        }
        if change != HealthChange::None || slot.polls_since_state >= STATE_EVERY_POLLS || items_read
        {
            slot.polls_since_state = 0;
            let status = slot.status(&bus.name, change, now);
            if events.send(BusEvent::MeterState(status)).await.is_err() {
                break;
            }
        }
    }
    debug!(bus = %bus.name, "bus task stopped");
}

/// The bus's device cannot be opened: every meter of it goes offline at once, its state
/// (offline, `error` naming the device) sent upstream, so the meter_offline and area_outage
/// alarms follow as for a silent bus. False when the channel is closed.
async fn mark_link_lost(
    slots: &mut [MeterSlot],
    bus: &str,
    error: &str,
    policy: &OfflinePolicy,
    events: &mpsc::Sender<BusEvent>,
) -> bool {
    let now = now_ms();
    for slot in slots.iter_mut() {
        let change = slot.health.link_lost(error.to_string(), policy);
        if change == HealthChange::WentOffline {
            warn!(bus = %bus, meter = %slot.settings.id, error = %error, "meter offline: its bus device is gone");
        }
        slot.polls_since_state += 1;
        if change != HealthChange::None || slot.polls_since_state >= STATE_EVERY_POLLS {
            slot.polls_since_state = 0;
            let status = slot.status(bus, change, now);
            if events.send(BusEvent::MeterState(status)).await.is_err() {
                return false;
            }
        }
    }
    true
}

/// Sleeps `wait`, telling the watchdog the bus is alive at least every [`BEAT_EVERY`]. True
/// when the stop signal came.
async fn sleep_beating(shutdown: &mut Shutdown, heartbeat: &Heartbeat, wait: Duration) -> bool {
    let end = Instant::now() + wait;
    loop {
        heartbeat.beat();
        let now = Instant::now();
        if now >= end {
            return false;
        }
        if shutdown.sleep((end - now).min(BEAT_EVERY)).await {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::driver::{DriverFuture, Poll};
    use crate::bus::{Endpoint, Protocol};
    use crate::meter::ModelLibrary;
    use crate::model::{PollOutcome, Reading};
    use crate::protocol::SerialLine;
    use crate::shutdown::Stop;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    /// A driver of no protocol: meter 0 answers and teaches a fact on its first poll, meter 1
    /// never answers, and the first poll breaks the link.
    struct ScriptedDriver {
        log: Arc<Mutex<Vec<String>>>,
        polls: usize,
    }

    fn answered(meter: &str, learned: Vec<Learned>, link_broken: bool) -> Poll {
        Poll {
            outcome: PollOutcome::Ok,
            reading: Some(Reading {
                meter: meter.into(),
                ts_ms: 0,
                values: BTreeMap::from([("energy_import_kwh".to_string(), 1.0)]),
            }),
            error: None,
            failures: Vec::new(),
            requests: 1,
            latency: Duration::from_millis(5),
            link_broken,
            learned,
        }
    }

    fn silent() -> Poll {
        let failure = crate::bus::ReadFailure {
            what: "everything".into(),
            error: "no reply".into(),
        };
        Poll {
            latency: Duration::from_millis(50),
            ..Poll::failed(PollOutcome::Timeout, failure, "no reply".into())
        }
    }

    impl Driver for ScriptedDriver {
        fn open(&mut self) -> DriverFuture<'_, Result<(), String>> {
            self.log.lock().unwrap().push("open".into());
            Box::pin(async { Ok(()) })
        }
        fn close(&mut self) {
            self.log.lock().unwrap().push("close".into());
        }
        fn poll(&mut self, meter: usize, _presumed_alive: bool) -> DriverFuture<'_, Poll> {
            self.polls += 1;
            self.log.lock().unwrap().push(format!("poll {meter}"));
            let first = self.polls == 1;
            Box::pin(async move {
                match meter {
                    0 if first => answered("a", vec![Learned::BlockLimit(20)], true),
                    0 => answered("a", Vec::new(), false),
                    _ => silent(),
                }
            })
        }
        fn probe(&mut self, meter: usize) -> DriverFuture<'_, Poll> {
            self.log.lock().unwrap().push(format!("probe {meter}"));
            Box::pin(async { silent() })
        }
        fn switch_pause(&self, _previous: Option<usize>, _meter: usize) -> Duration {
            Duration::ZERO
        }
    }

    #[tokio::test]
    async fn the_scheduler_runs_any_driver() {
        let model = Arc::new(
            ModelLibrary::builtin()
                .get("eastron-sdm120")
                .unwrap()
                .clone(),
        );
        let bus = BusSettings {
            name: "b".into(),
            protocol: Protocol::Dlt645,
            endpoint: Endpoint::Serial("/dev/null".into()),
            line: SerialLine::MODBUS_DEFAULT,
            timeout: Duration::from_millis(50),
            poll_interval: Duration::from_secs(1),
            preamble: 4,
            time_sync: Default::default(),
        };
        let meters = vec![
            MeterSettings::modbus("a", 1, model.clone()),
            MeterSettings::modbus("b", 2, model),
        ];
        let log = Arc::new(Mutex::new(Vec::new()));
        let driver = Box::new(ScriptedDriver {
            log: log.clone(),
            polls: 0,
        });
        let (tx, mut rx) = mpsc::channel(64);
        let (stop, shutdown) = Stop::new();
        let policy = OfflinePolicy {
            first_probe: Duration::from_millis(100),
            max_probe_share: 1.0,
            ..OfflinePolicy::default()
        };
        let task = tokio::spawn(run_with(
            driver,
            bus,
            meters,
            policy,
            tx,
            None,
            shutdown,
            Heartbeat::unwatched(),
        ));
        let mut events = Vec::new();
        while let Some(ev) = rx.recv().await {
            let offline = matches!(&ev, BusEvent::MeterState(s)
                if s.meter == "b" && s.change == HealthChange::WentOffline);
            events.push(ev);
            if offline {
                break;
            }
        }
        // Learned facts come before the reading of the poll that taught them.
        assert!(
            matches!(&events[0], BusEvent::Learned { meter, learned: Learned::BlockLimit(20) }
            if meter == "a")
        );
        assert!(matches!(&events[1], BusEvent::Reading(r) if r.meter == "a"));
        // Then probes of the offline meter, after its backoff.
        for _ in 0..100 {
            if log.lock().unwrap().iter().any(|l| l == "probe 1") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.stop();
        task.await.unwrap();
        let log = log.lock().unwrap().clone();
        assert_eq!(&log[..4], ["open", "poll 0", "close", "open"], "{log:?}");
        let failed_polls = log.iter().filter(|l| *l == "poll 1").count();
        assert_eq!(failed_polls as u32, policy.failures_to_offline, "{log:?}");
        assert!(log.iter().any(|l| l == "probe 1"), "{log:?}");
    }

    /// A driver whose meters all answer or all stay silent together (a line cut and mended).
    struct WholeBusDriver {
        alive: Arc<std::sync::atomic::AtomicBool>,
        log: Arc<Mutex<Vec<(Instant, String)>>>,
    }

    impl WholeBusDriver {
        fn answer(&mut self, what: &str, meter: usize) -> DriverFuture<'_, Poll> {
            self.log
                .lock()
                .unwrap()
                .push((Instant::now(), format!("{what} {meter}")));
            let alive = self.alive.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                if alive {
                    answered(&format!("m{meter}"), Vec::new(), false)
                } else {
                    silent()
                }
            })
        }
    }

    impl Driver for WholeBusDriver {
        fn open(&mut self) -> DriverFuture<'_, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }
        fn close(&mut self) {}
        fn poll(&mut self, meter: usize, _presumed_alive: bool) -> DriverFuture<'_, Poll> {
            self.answer("poll", meter)
        }
        fn probe(&mut self, meter: usize) -> DriverFuture<'_, Poll> {
            self.answer("probe", meter)
        }
        fn switch_pause(&self, _previous: Option<usize>, _meter: usize) -> Duration {
            Duration::ZERO
        }
    }

    /// When every meter of a bus went silent and one answers a probe again, the others are
    /// probed at once, not each after its own backoff.
    #[tokio::test]
    async fn a_silent_bus_comes_back_as_a_bus() {
        let model = Arc::new(
            ModelLibrary::builtin()
                .get("eastron-sdm120")
                .unwrap()
                .clone(),
        );
        let bus = BusSettings {
            name: "b".into(),
            protocol: Protocol::ModbusRtu,
            endpoint: Endpoint::Serial("/dev/null".into()),
            line: SerialLine::MODBUS_DEFAULT,
            timeout: Duration::from_millis(50),
            poll_interval: Duration::from_secs(1),
            preamble: 4,
            time_sync: Default::default(),
        };
        let meters: Vec<MeterSettings> = (0..4)
            .map(|i| MeterSettings::modbus(format!("m{i}"), i + 1, model.clone()))
            .collect();
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let driver = Box::new(WholeBusDriver {
            alive: alive.clone(),
            log: log.clone(),
        });
        let policy = OfflinePolicy {
            first_probe: Duration::from_millis(500),
            max_probe_share: 1.0,
            ..OfflinePolicy::default()
        };
        let (tx, mut rx) = mpsc::channel(256);
        let (stop, shutdown) = Stop::new();
        let task = tokio::spawn(run_with(
            driver,
            bus,
            meters,
            policy,
            tx,
            None,
            shutdown,
            Heartbeat::unwatched(),
        ));
        let mut online = std::collections::BTreeSet::new();
        loop {
            let ev = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await;
            if let Ok(Some(BusEvent::MeterState(s))) = &ev
                && s.change == HealthChange::WentOnline
                && alive.load(std::sync::atomic::Ordering::SeqCst)
            {
                online.insert(s.meter.clone());
                if online.len() == 4 {
                    break;
                }
            }
            // Every meter probed three times without an answer: their backoff is 4 s and
            // growing. Then the line is mended.
            let probes = |m: usize| {
                log.lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, l): &&(Instant, String)| *l == format!("probe {m}"))
                    .count()
            };
            if (0..4).all(|m| probes(m) >= 3) {
                alive.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        stop.stop();
        task.await.unwrap();
        let log: Vec<String> = log.lock().unwrap().iter().map(|(_, l)| l.clone()).collect();
        // The first call after the mend answers; among the next four calls are the probes of
        // the three others (a full poll of the one that answered may come between). Without
        // the rush the answering meter would be polled every second while the others wait for
        // their backoff.
        let probes: Vec<usize> = log
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with("probe"))
            .map(|(i, _)| i)
            .collect();
        // The last four probes: the one that answered first, and the three it rushed.
        let last_four = &probes[probes.len() - 4..];
        assert!(
            last_four[3] - last_four[0] <= 4,
            "the other meters were not probed at once: {log:?}"
        );
    }
}
