//! The outbox publisher: the one task that talks MQTT to the headend.
//!
//! Every connection attempt gets a FRESH `AsyncClient` + `EventLoop` (clean session), because
//! rumqttc drops or replays unacknowledged QoS 1 messages unreliably across its own reconnects
//! and reconnects with no delay. Durability comes from the store instead:
//!
//! 1. connect with a last will (retained `status` = offline);
//! 2. on CONNACK publish the retained `status` = online, then outbox rows oldest first, at most
//!    `max_inflight` unacknowledged at once, read from the store ahead of need by a job on the
//!    blocking pool (the session never waits for the store);
//! 3. map each PUBACK to its outbox row — rumqttc reports `Outgoing::Publish(pkid)` in the order
//!    the publish requests were made on that client, so a FIFO of row ids per connection gives
//!    the pkid → row mapping — and delete acknowledged rows from the store in batches, each
//!    a job on the blocking pool while publishing goes on;
//! 4. when the connection fails, drop the client, wait (exponential backoff from 1 s with
//!    jitter, up to `reconnect_max_s`) and start again at 1: every row still in the outbox is
//!    re-sent from the oldest.
//!
//! The publisher never blocks the pollers: they write to the store and call
//! `wake.notify_one()`; the publisher reads the store.
//!
//! Besides the outbox it publishes the gateway's health (retained, QoS 1, not sequenced and
//! not stored: a snapshot, each one replacing the last): the latest payload on every
//! connection and each new one as it comes.

use crate::clock::now_ms;
use crate::shutdown::Shutdown;
use crate::store::{OutboxRow, SharedStore, StoreError, with_store};
use crate::uplink::MqttSettings;
use crate::uplink::contract::Topics;
use crate::uplink::tls;
use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// What the uplink is doing, for the demo's live summary and `status`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UplinkState {
    /// A broker session is up (CONNACK received, not yet failed).
    pub connected: bool,
    /// Outbox rows handed to the broker since start (re-sends count again).
    pub published: u64,
    /// Outbox rows acknowledged by the broker (and deleted from the outbox) since start.
    pub acked: u64,
    /// Rows waiting in the outbox.
    pub backlog: u64,
    /// Creation time of the oldest row in the outbox.
    pub oldest_backlog_ms: Option<i64>,
}

/// Rows fetched from the store per query. The next query starts (on the blocking pool, while
/// publishing goes on) once fewer than half are left, so at most `2 * FETCH_ROWS` rows are in
/// memory whatever the backlog.
const FETCH_ROWS: usize = 1024;
/// Acknowledged row ids collected before one delete transaction (they are also flushed every
/// `ACK_EVERY` and when the connection ends): one transaction for many acks, so a draining
/// backlog is not one fsync per message. A crash re-sends at most these (at least once), and
/// while draining also those acknowledged during the running delete (they join the next one).
const ACK_BATCH: usize = 1024;
/// How often acknowledged rows are deleted while few arrive (each delete is a transaction
/// and an fsync: at one a second, steady state writes little).
const ACK_EVERY: Duration = Duration::from_secs(1);
/// How often acks are flushed and the summary refreshed while connected.
const TICK: Duration = Duration::from_millis(200);
/// How often the backlog (a count over the whole outbox: tens of milliseconds for a week of
/// backlog) is refreshed for the summary while draining.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);
/// First wait after a failed connection.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// Command payloads waiting for the desk before more are dropped.
pub const COMMAND_QUEUE: usize = 64;
/// How long a clean shutdown waits for the offline status and DISCONNECT to go out.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Publishes the outbox to the broker until `shutdown` says stop; reconnects forever.
///
/// On shutdown it publishes the retained offline status and disconnects cleanly (when
/// connected). Errors are logged, never returned: the broker being unreachable is normal and
/// is reported once per outage at warn level.
pub async fn run(
    cfg: MqttSettings,
    topics: Topics,
    store: SharedStore,
    wake: Arc<Notify>,
    state: watch::Sender<UplinkState>,
    shutdown: Shutdown,
) {
    run_with_commands(cfg, topics, store, wake, state, None, None, shutdown).await;
}

/// [`run`], also subscribed (QoS 1, on every connection) to `{prefix}/{gateway}/command`:
/// each payload that arrives there goes to `commands` as it is, for the command desk to
/// check (`super::desk`). When the desk is behind by [`COMMAND_QUEUE`] payloads, more are
/// dropped with a warning: a flood never holds up the outbox. With `health`, each payload
/// it carries goes out retained on `{prefix}/{gateway}/health` (an empty one is not sent).
#[allow(clippy::too_many_arguments)]
pub async fn run_with_commands(
    cfg: MqttSettings,
    topics: Topics,
    store: SharedStore,
    wake: Arc<Notify>,
    state: watch::Sender<UplinkState>,
    commands: Option<mpsc::Sender<Vec<u8>>>,
    health: Option<watch::Receiver<Vec<u8>>>,
    mut shutdown: Shutdown,
) {
    let mut health = health;
    let mut backoff = Backoff::new(Duration::from_secs(cfg.reconnect_max_s.max(1)));
    let mut outage: Option<Outage> = None;
    refresh_backlog(&store, &state).await;
    // Acknowledgements the store could not record yet (a full disk): kept across
    // connections, retried, and their rows never sent again meanwhile.
    let mut ledger = AckLedger::default();
    loop {
        if shutdown.is_stopping() {
            return;
        }
        let mut connection = Connection::new(&cfg, &topics, &store, &wake, &state, &mut ledger);
        connection.commands = commands.as_ref();
        connection.health = health.as_mut();
        let end = connection.run(&mut shutdown).await;
        if connection.connected_once {
            backoff.reset();
            if let Some(o) = outage.take() {
                info!(
                    "MQTT broker {}:{} reachable again after {} failed attempts ({} s)",
                    cfg.host,
                    cfg.port,
                    o.attempts,
                    (now_ms() - o.since_ms) / 1000
                );
            }
        }
        state.send_modify(|s| s.connected = false);
        let reason = match end {
            ConnectionEnd::Shutdown => return,
            ConnectionEnd::Failed(reason) => reason,
        };
        match &mut outage {
            None => {
                warn!(
                    "MQTT broker {}:{}: {reason}; unsent messages stay in the store, \
                     retrying with backoff up to {} s",
                    cfg.host, cfg.port, cfg.reconnect_max_s
                );
                outage = Some(Outage {
                    since_ms: now_ms(),
                    attempts: 1,
                });
            }
            Some(o) => {
                o.attempts += 1;
                debug!("MQTT connection attempt {} failed: {reason}", o.attempts);
            }
        }
        let wait = backoff.next_wait();
        debug!("next MQTT connection attempt in {wait:?}");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait() => {}
        }
    }
}

/// Acknowledged rows not yet deleted from the outbox, and since when deleting them fails
/// (for one warning when it starts and one note when it ends).
#[derive(Debug, Default)]
struct AckLedger {
    ids: Vec<i64>,
    failing_since_ms: Option<i64>,
}

/// An ongoing outage, for one warning at its start and one note at its end.
struct Outage {
    since_ms: i64,
    attempts: u64,
}

enum ConnectionEnd {
    Shutdown,
    Failed(String),
}

/// What an acknowledgement job hands back: the row ids it tried to delete, how that went, and
/// the backlog counted after it (when one was due).
type AckOutcome = (
    Vec<i64>,
    Result<usize, StoreError>,
    Option<(u64, Option<i64>)>,
);

/// One connection attempt and, if it succeeds, the session on it.
///
/// Store work never holds up the session: the next rows are read, and acknowledged rows
/// deleted, by jobs on the blocking pool (at most one of each at a time) while publishing and
/// PUBACKs go on. Memory stays bounded whatever the backlog: at most `2 * FETCH_ROWS` fetched
/// rows, `max_inflight` unacknowledged ones, and the acknowledged ids of about one ack batch.
struct Connection<'a> {
    cfg: &'a MqttSettings,
    topics: &'a Topics,
    store: &'a SharedStore,
    wake: &'a Notify,
    state: &'a watch::Sender<UplinkState>,
    connected_once: bool,
    /// Rows (`Some(id)`) and the status message (`None`) requested on this client whose
    /// `Outgoing::Publish` has not been seen yet, in request order.
    requested: VecDeque<Option<i64>>,
    /// pkid → row awaiting its PUBACK.
    awaiting_ack: HashMap<u16, Option<i64>>,
    /// Rows handed to the client and not yet acknowledged.
    in_flight: usize,
    /// Rows fetched from the store and not yet published, oldest first.
    fetched: VecDeque<OutboxRow>,
    /// The highest row id fetched on this connection: the next read starts after it.
    fetched_to: i64,
    /// The last read came back short: the outbox holds nothing newer until the writer wakes
    /// us (or the next tick).
    drained: bool,
    /// The writer woke us while a read was running: that read may have missed the new rows,
    /// so the outbox is read again after it whatever it found.
    woken: bool,
    /// The running outbox read, if any.
    fetching: Option<JoinHandle<Result<Vec<OutboxRow>, StoreError>>>,
    /// The running acknowledgement job, if any.
    flushing: Option<JoinHandle<AckOutcome>>,
    /// When the backlog was last counted.
    backlog_counted: Option<tokio::time::Instant>,
    /// Acknowledged rows not yet deleted from the store (kept across connections).
    acked: &'a mut AckLedger,
    /// Where command payloads go (subscribed only when set).
    commands: Option<&'a mpsc::Sender<Vec<u8>>>,
    /// The latest health payload (published on connection and whenever it changes).
    health: Option<&'a mut watch::Receiver<Vec<u8>>>,
}

impl<'a> Connection<'a> {
    fn new(
        cfg: &'a MqttSettings,
        topics: &'a Topics,
        store: &'a SharedStore,
        wake: &'a Notify,
        state: &'a watch::Sender<UplinkState>,
        acked: &'a mut AckLedger,
    ) -> Self {
        Connection {
            cfg,
            topics,
            store,
            wake,
            state,
            connected_once: false,
            requested: VecDeque::new(),
            awaiting_ack: HashMap::new(),
            in_flight: 0,
            fetched: VecDeque::new(),
            fetched_to: 0,
            drained: false,
            woken: false,
            fetching: None,
            flushing: None,
            backlog_counted: None,
            acked,
            commands: None,
            health: None,
        }
    }

    async fn run(&mut self, shutdown: &mut Shutdown) -> ConnectionEnd {
        let options = match mqtt_options(self.cfg, self.topics) {
            Ok(o) => o,
            Err(reason) => return ConnectionEnd::Failed(reason),
        };
        let max_inflight = usize::from(self.cfg.max_inflight.max(1));
        let (client, mut eventloop) = AsyncClient::new(options, max_inflight + 8);
        // The event loop runs in its own task so that nothing here ever cancels a poll halfway.
        let (events_tx, mut events) = mpsc::channel(1024);
        let poller = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let failed = event.is_err();
                if events_tx.send(event).await.is_err() || failed {
                    return;
                }
            }
        });
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_flush = tokio::time::Instant::now();
        let end = loop {
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else {
                        break ConnectionEnd::Failed("event loop ended".into());
                    };
                    match event {
                        Ok(event) => {
                            if let Err(reason) = self.on_event(&client, event) {
                                break ConnectionEnd::Failed(reason);
                            }
                        }
                        Err(e) => break ConnectionEnd::Failed(tls::explain(self.cfg, &e)),
                    }
                }
                rows = finished(&mut self.fetching) => {
                    self.fetching = None;
                    match rows {
                        Ok(rows) => self.on_fetched(rows),
                        Err(e) => {
                            warn!("reading the outbox failed: {e}");
                            self.drained = true;
                        }
                    }
                    self.fill(&client);
                }
                outcome = finished(&mut self.flushing) => {
                    self.flushing = None;
                    self.on_flushed(outcome);
                }
                _ = self.wake.notified(), if self.connected_once => {
                    self.drained = false;
                    self.woken = self.fetching.is_some();
                    self.fill(&client);
                }
                Some(()) = health_changed(&mut self.health), if self.connected_once => {
                    if let Err(reason) = self.publish_health(&client) {
                        break ConnectionEnd::Failed(reason);
                    }
                }
                _ = tick.tick() => {
                    if last_flush.elapsed() >= ACK_EVERY {
                        last_flush = tokio::time::Instant::now();
                        self.start_flush();
                    }
                    if self.connected_once {
                        self.drained = false;
                        self.fill(&client);
                    }
                }
                _ = shutdown.wait() => {
                    if self.connected_once {
                        self.say_goodbye(&client, &mut events).await;
                    }
                    break ConnectionEnd::Shutdown;
                }
            }
        };
        poller.abort();
        // A read still running is of no use any more; the acknowledgements all go to the store.
        self.fetching = None;
        self.flush_acks().await;
        end
    }

    fn on_event(&mut self, client: &AsyncClient, event: Event) -> Result<(), String> {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => {
                if ack.code != rumqttc::ConnectReturnCode::Success {
                    return Err(format!("broker refused the connection: {:?}", ack.code));
                }
                info!(
                    "connected to MQTT broker {}:{}",
                    self.cfg.host, self.cfg.port
                );
                self.connected_once = true;
                self.state.send_modify(|s| s.connected = true);
                // Subscribed before `online` goes out: whoever sees the gateway online can
                // command it.
                if self.commands.is_some() {
                    client
                        .try_subscribe(self.topics.command(), QoS::AtLeastOnce)
                        .map_err(|e| format!("cannot subscribe to the command topic: {e}"))?;
                }
                client
                    .try_publish(
                        self.topics.status(),
                        QoS::AtLeastOnce,
                        true,
                        Topics::status_payload(true, now_ms()),
                    )
                    .map_err(|e| format!("cannot publish status: {e}"))?;
                self.requested.push_back(None);
                self.publish_health(client)?;
                self.fill(client);
            }
            Event::Incoming(Packet::Publish(p)) if p.topic == self.topics.command() => {
                if let Some(commands) = self.commands
                    && commands.try_send(p.payload.to_vec()).is_err()
                {
                    warn!(
                        "command dropped: {COMMAND_QUEUE} commands are already waiting to be \
                         checked (a flood?)"
                    );
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let Some(row) = self.requested.pop_front() else {
                    return Err(format!("publish {pkid} that was never requested"));
                };
                if pkid == 0 {
                    // QoS 0: written is all there will ever be.
                    if let Some(id) = row {
                        self.on_acked(id);
                        self.fill(client);
                    }
                } else {
                    self.awaiting_ack.insert(pkid, row);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(Some(id)) = self.awaiting_ack.remove(&ack.pkid) {
                    self.on_acked(id);
                    self.fill(client);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The latest health payload, retained (nothing before the first one is gathered).
    fn publish_health(&mut self, client: &AsyncClient) -> Result<(), String> {
        let Some(health) = self.health.as_mut() else {
            return Ok(());
        };
        let payload = health.borrow_and_update().clone();
        if payload.is_empty() {
            return Ok(());
        }
        client
            .try_publish(self.topics.health(), QoS::AtLeastOnce, true, payload)
            .map_err(|e| format!("cannot publish health: {e}"))?;
        self.requested.push_back(None);
        Ok(())
    }

    fn on_acked(&mut self, id: i64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.acked.ids.push(id);
        if self.acked.ids.len() >= ACK_BATCH && self.acked.failing_since_ms.is_none() {
            self.start_flush();
        }
    }

    /// Publishes fetched rows until `max_inflight` are unacknowledged or none are left, and
    /// starts the next outbox read when fewer than half a read's worth are left.
    fn fill(&mut self, client: &AsyncClient) {
        let max_inflight = usize::from(self.cfg.max_inflight.max(1));
        while self.in_flight < max_inflight {
            let Some(row) = self.fetched.pop_front() else {
                break;
            };
            let qos = match row.qos {
                0 => QoS::AtMostOnce,
                _ => QoS::AtLeastOnce,
            };
            let id = row.id;
            if let Err(e) =
                client.try_publish(row.topic.clone(), qos, row.retain, row.payload.clone())
            {
                // Cannot happen while in_flight bounds the channel; retried on the next call.
                debug!("publish request refused: {e}");
                self.fetched.push_front(row);
                break;
            }
            self.requested.push_back(Some(id));
            self.in_flight += 1;
            self.state.send_modify(|s| s.published += 1);
        }
        self.start_fetch();
    }

    /// Starts reading the rows after `fetched_to`, unless a read is running, enough rows are
    /// waiting, or the outbox had nothing newer at the last read.
    fn start_fetch(&mut self) {
        if self.fetching.is_some() || self.drained || self.fetched.len() >= FETCH_ROWS / 2 {
            return;
        }
        let store = Arc::clone(self.store);
        let after = self.fetched_to;
        self.fetching = Some(tokio::spawn(async move {
            with_store(&store, move |s| s.pending(after, FETCH_ROWS)).await
        }));
    }

    /// Takes in the rows a read found; rows delivered but not yet deleted are not sent again.
    fn on_fetched(&mut self, rows: Result<Vec<OutboxRow>, StoreError>) {
        match rows {
            Ok(rows) => {
                self.drained = rows.len() < FETCH_ROWS && !self.woken;
                self.woken = false;
                let Some(last) = rows.last().map(|r| r.id) else {
                    return;
                };
                // A read started before a reconnect's reset may end after it: never go back.
                if last <= self.fetched_to {
                    return;
                }
                let delivered: HashSet<i64> = self.acked.ids.iter().copied().collect();
                let after = self.fetched_to;
                self.fetched.extend(
                    rows.into_iter()
                        .filter(|r| r.id > after && !delivered.contains(&r.id)),
                );
                self.fetched_to = last;
            }
            Err(e) => {
                warn!("cannot read the outbox: {e}");
                self.drained = true;
            }
        }
    }

    /// Starts deleting the acknowledged rows (and counting the backlog, once a
    /// `BACKLOG_EVERY`) unless a deletion is running already.
    fn start_flush(&mut self) {
        if self.flushing.is_some() {
            return;
        }
        let count_backlog = self
            .backlog_counted
            .is_none_or(|at| at.elapsed() >= BACKLOG_EVERY);
        if self.acked.ids.is_empty() && !count_backlog {
            return;
        }
        if count_backlog {
            self.backlog_counted = Some(tokio::time::Instant::now());
        }
        let ids = std::mem::take(&mut self.acked.ids);
        let store = Arc::clone(self.store);
        self.flushing = Some(tokio::spawn(async move {
            with_store(&store, move |s| {
                let deleted = s.ack(&ids);
                let backlog = if count_backlog {
                    s.backlog().ok()
                } else {
                    None
                };
                (ids, deleted, backlog)
            })
            .await
        }));
    }

    /// Records how an acknowledgement job went; starts the next one if a batch is waiting.
    fn on_flushed(&mut self, outcome: Result<AckOutcome, String>) {
        let (ids, deleted, backlog) = match outcome {
            Ok(outcome) => outcome,
            // The job panicked: its rows stay in the outbox and are sent again (at least once).
            Err(e) => {
                warn!("deleting acknowledged rows failed: {e}");
                return;
            }
        };
        match deleted {
            Ok(_) => {
                let count = ids.len() as u64;
                self.state.send_modify(|s| s.acked += count);
                if let Some(since) = self.acked.failing_since_ms.take() {
                    info!(
                        "recorded the acknowledgements held since {} s ago; their messages \
                         are not sent again",
                        (now_ms() - since) / 1000
                    );
                }
            }
            // Kept and retried: a delivered message must not be re-sent as backlog.
            Err(e) => {
                let mut ids = ids;
                ids.append(&mut self.acked.ids);
                self.acked.ids = ids;
                if self.acked.failing_since_ms.is_none() {
                    self.acked.failing_since_ms = Some(now_ms());
                    warn!(
                        "cannot delete acknowledged rows from the outbox ({e}); keeping the \
                         acknowledgements in memory and retrying"
                    );
                }
            }
        }
        if let Some((count, oldest)) = backlog {
            self.state.send_modify(|s| {
                s.backlog = count;
                s.oldest_backlog_ms = oldest;
            });
        }
        if self.acked.ids.len() >= ACK_BATCH && self.acked.failing_since_ms.is_none() {
            self.start_flush();
        }
    }

    /// Waits for the running acknowledgement job, then deletes the rest and counts the backlog.
    async fn flush_acks(&mut self) {
        let mut last_started = false;
        loop {
            if let Some(job) = self.flushing.take() {
                let outcome = job.await.map_err(|e| e.to_string());
                self.on_flushed(outcome);
                continue;
            }
            if last_started {
                return;
            }
            self.backlog_counted = None;
            self.start_flush();
            last_started = true;
        }
    }

    /// Retained offline status, then DISCONNECT; waits a little for both to go out.
    async fn say_goodbye(
        &mut self,
        client: &AsyncClient,
        events: &mut mpsc::Receiver<Result<Event, rumqttc::ConnectionError>>,
    ) {
        let offline = Topics::status_payload(false, now_ms());
        if client
            .try_publish(self.topics.status(), QoS::AtLeastOnce, true, offline)
            .is_err()
        {
            return;
        }
        self.requested.push_back(None);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let mut status_pkid = None;
        let mut disconnect_sent = false;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
            let Ok(event) = event else { return };
            match event {
                Event::Outgoing(Outgoing::Publish(pkid)) => match self.requested.pop_front() {
                    Some(None) => status_pkid = Some(pkid),
                    Some(row) => {
                        self.awaiting_ack.insert(pkid, row);
                    }
                    None => {}
                },
                Event::Incoming(Packet::PubAck(ack)) => {
                    if let Some(Some(id)) = self.awaiting_ack.remove(&ack.pkid) {
                        self.acked.ids.push(id);
                    }
                    if Some(ack.pkid) == status_pkid && !disconnect_sent {
                        disconnect_sent = client.try_disconnect().is_ok();
                    }
                }
                Event::Outgoing(Outgoing::Disconnect) => return,
                _ => {}
            }
        }
    }
}

/// Broker options for one connection: clean session, last will = retained offline status,
/// credentials from `password_file`, TLS (and a client certificate) when `tls`.
fn mqtt_options(cfg: &MqttSettings, topics: &Topics) -> Result<MqttOptions, String> {
    let mut options = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    options
        .set_clean_session(true)
        .set_keep_alive(Duration::from_secs(cfg.keep_alive_s.max(5)))
        .set_inflight(cfg.max_inflight.max(1).saturating_add(2))
        .set_max_packet_size(1024 * 1024, 1024 * 1024)
        .set_last_will(LastWill::new(
            topics.status(),
            Topics::last_will_payload(),
            QoS::AtLeastOnce,
            true,
        ));
    if let Some(user) = &cfg.username {
        let password = match &cfg.password_file {
            Some(file) => std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read [mqtt] password_file {}: {e}", file.display()))?
                .trim()
                .to_string(),
            None => String::new(),
        };
        options.set_credentials(user.clone(), password);
    }
    if cfg.tls {
        let config = tls::client_config(cfg)?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    }
    Ok(options)
}

/// The result of a running store job; never without one. A job that panicked gives its panic
/// as text.
async fn finished<T>(job: &mut Option<JoinHandle<T>>) -> Result<T, String> {
    match job {
        Some(handle) => handle.await.map_err(|e| e.to_string()),
        None => std::future::pending().await,
    }
}

/// Resolves when a new health payload is there; never without a health channel (or once its
/// sender is gone).
async fn health_changed(health: &mut Option<&mut watch::Receiver<Vec<u8>>>) -> Option<()> {
    match health {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

async fn refresh_backlog(store: &SharedStore, state: &watch::Sender<UplinkState>) {
    if let Ok((count, oldest)) = with_store(store, |s| s.backlog()).await {
        state.send_modify(|s| {
            s.backlog = count;
            s.oldest_backlog_ms = oldest;
        });
    }
}

/// Exponential backoff from 1 s, doubled per failure up to a ceiling, each wait scaled by a
/// jitter factor in [0.5, 1.0) so that many gateways do not reconnect in step after a
/// headend outage. The jitter comes from the clock's nanoseconds: no RNG crate needed.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Backoff {
            next: BACKOFF_START.min(max),
            max,
        }
    }

    /// Back to 1 s (after a successful connection).
    pub fn reset(&mut self) {
        self.next = BACKOFF_START.min(self.max);
    }

    /// The wait before the next attempt; doubles the one after it.
    pub fn next_wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // Mix the bits a little: low nanosecond digits are often coarse.
        let mixed = nanos.wrapping_mul(2_654_435_761) >> 8;
        let fraction = f64::from(mixed % 1_000_000) / 1_000_000.0;
        base.mul_f64(0.5 + fraction / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(8));
        let waits: Vec<Duration> = (0..6).map(|_| b.next_wait()).collect();
        let bases = [1, 2, 4, 8, 8, 8];
        for (w, base) in waits.iter().zip(bases) {
            let base = Duration::from_secs(base);
            assert!(*w >= base / 2 && *w < base, "{w:?} for {base:?}");
        }
        b.reset();
        assert!(b.next_wait() < Duration::from_secs(1));
    }
}
