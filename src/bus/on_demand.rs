//! Reads on demand (the headend's `read` command, 点抄): a request names meters of one bus;
//! the bus task makes them due now, so they are read between scheduled polls, one transaction
//! at a time like every poll, and answers once each has been polled. The readings also go out
//! as usual.
//!
//! A request may ask for a broadcast time sync first (the headend's `time_sync`): the bus task
//! sends it now — unless its protocol has none, the gateway's clock is unsynchronised or local
//! midnight is within five minutes, when every meter is answered with why — and then reads the
//! meters' clocks: each answer carries the meter's clock skew before and after.
//!
//! A request may carry a relay order instead (the headend's `relay`, 费控): the bus task gives
//! it to its driver between two transactions ([`OnDemand::serve_relays`]); the answer carries
//! the meter's reply and the relay state read back. The order carries the meter's password and
//! operator code, taken from the secrets file by the gateway, never from the command.

use super::driver::Driver;
use crate::model::{MeterId, Reading};
use tokio::sync::{mpsc, oneshot};

/// A request to read meters of one bus now.
#[derive(Debug)]
pub struct ReadRequest {
    /// The meters (of this bus) to read; empty: every meter of the bus.
    pub meters: Vec<MeterId>,
    pub reply: oneshot::Sender<Vec<MeterRead>>,
    /// Send a broadcast time sync first, then read the meters (and their clocks).
    pub time_sync: bool,
    /// A relay order for the one meter of `meters`, instead of a read.
    pub relay: Option<RelayOrder>,
}

/// What the headend asks of a meter's relay (protocol-agnostic names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayAction {
    Trip,
    Close,
    Alarm,
    AlarmOff,
    KeepPower,
    KeepPowerOff,
}

impl RelayAction {
    /// The name the command uses (`trip`, `close`, ...).
    pub fn name(self) -> &'static str {
        match self {
            RelayAction::Trip => "trip",
            RelayAction::Close => "close",
            RelayAction::Alarm => "alarm",
            RelayAction::AlarmOff => "alarm_off",
            RelayAction::KeepPower => "keep_power",
            RelayAction::KeepPowerOff => "keep_power_off",
        }
    }
}

/// A relay order with the meter's secrets (as the wire carries them).
#[derive(Clone, PartialEq, Eq)]
pub struct RelayOrder {
    pub action: RelayAction,
    /// Level and password, wire order (DL/T 645: PA P0 P1 P2).
    pub password: [u8; 4],
    /// Operator code, wire order (C0..C3).
    pub operator: [u8; 4],
}

impl std::fmt::Debug for RelayOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secrets never reach a log line.
        f.debug_struct("RelayOrder")
            .field("action", &self.action)
            .finish_non_exhaustive()
    }
}

/// What a relay order gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayOutcome {
    /// The meter took the order.
    pub accepted: bool,
    /// The meter's reply in words: `ok`, or why it refused (its ERR bits).
    pub reply: String,
    /// The relay state read back: `closed` or `open`; `None` when it could not be read.
    pub relay: Option<&'static str>,
    /// The pre-trip alarm, as read back.
    pub alarm: Option<bool>,
    /// Keep power, as read back.
    pub keep_power: Option<bool>,
    /// The last order was to open the relay, as read back.
    pub command_open: Option<bool>,
    /// Why the state could not be read back.
    pub read_back_error: Option<String>,
}

/// What one on-demand read of a meter gave.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterRead {
    pub meter: MeterId,
    /// The reading, when the meter answered.
    pub reading: Option<Reading>,
    /// Why there is no reading (or a partial one).
    pub error: Option<String>,
    /// With a time sync: the meter's clock skew (s) as last read before it...
    pub skew_before_s: Option<f64>,
    /// ... and as read after it.
    pub skew_after_s: Option<f64>,
    /// With a relay order: what it gave (`error` says why there is none).
    pub relay: Option<RelayOutcome>,
}

/// The open requests of one bus task.
pub(super) struct OnDemand {
    requests: Option<mpsc::Receiver<ReadRequest>>,
    /// Requests received while the bus waited, not yet opened.
    arrived: Vec<ReadRequest>,
    /// Requests that want a time sync first, not yet handled by the bus task.
    syncs: Vec<ReadRequest>,
    /// Relay orders, not yet given to the driver.
    relays: Vec<ReadRequest>,
    open: Vec<Open>,
}

struct Open {
    waiting: Vec<usize>,
    done: Vec<MeterRead>,
    reply: oneshot::Sender<Vec<MeterRead>>,
    /// With a time sync: each waiting meter's skew before it.
    before: Option<Vec<Option<f64>>>,
}

impl OnDemand {
    pub(super) fn new(requests: Option<mpsc::Receiver<ReadRequest>>) -> OnDemand {
        OnDemand {
            requests,
            arrived: Vec::new(),
            syncs: Vec::new(),
            relays: Vec::new(),
            open: Vec::new(),
        }
    }

    /// Takes the requests that arrived; returns the slots (indices into `ids`) to make due
    /// now. Meters not on this bus are answered at once as unknown.
    pub(super) fn take_new(&mut self, ids: &[&str]) -> Vec<usize> {
        let mut due = Vec::new();
        let mut new = std::mem::take(&mut self.arrived);
        while let Some(req) = self.requests.as_mut().and_then(|r| r.try_recv().ok()) {
            new.push(req);
        }
        for req in new {
            if req.relay.is_some() {
                self.relays.push(req);
                continue;
            }
            if req.time_sync {
                self.syncs.push(req);
                continue;
            }
            due.extend(self.open_request(req, ids, None));
        }
        due
    }

    /// The requests that want a time sync first: the bus task sends it (or refuses) and then
    /// opens them ([`OnDemand::open_synced`]) or answers them ([`OnDemand::refuse`]).
    pub(super) fn take_syncs(&mut self) -> Vec<ReadRequest> {
        std::mem::take(&mut self.syncs)
    }

    /// Opens a request after its time sync went out; `before`: every slot's clock skew before
    /// it. Returns the slots to make due now.
    pub(super) fn open_synced(
        &mut self,
        req: ReadRequest,
        ids: &[&str],
        before: Vec<Option<f64>>,
    ) -> Vec<usize> {
        self.open_request(req, ids, Some(before))
    }

    /// Gives each relay order that arrived to `driver`, one at a time, and answers it.
    pub(super) async fn serve_relays(&mut self, driver: &mut dyn Driver, ids: &[&str]) {
        for req in std::mem::take(&mut self.relays) {
            let Some(order) = req.relay.clone() else {
                continue;
            };
            let meter = req.meters.first().cloned().unwrap_or_default();
            let outcome = match ids.iter().position(|id| *id == meter) {
                None => Err("not a meter of this bus".to_string()),
                Some(idx) => {
                    tracing::info!(meter = %meter, action = order.action.name(),
                        "relay order (headend command)");
                    driver.relay(idx, &order, crate::clock::now_ms()).await
                }
            };
            let (relay, error) = match outcome {
                Ok(o) => (Some(o), None),
                Err(e) => (None, Some(e)),
            };
            let _ = req.reply.send(vec![MeterRead {
                meter,
                reading: None,
                error,
                skew_before_s: None,
                skew_after_s: None,
                relay,
            }]);
        }
    }

    /// Answers every meter of a request with `why` (its time sync was not sent).
    pub(super) fn refuse(&mut self, req: ReadRequest, ids: &[&str], why: &str) {
        let meters: Vec<MeterId> = if req.meters.is_empty() {
            ids.iter().map(|s| s.to_string()).collect()
        } else {
            req.meters
        };
        let done = meters
            .into_iter()
            .map(|meter| MeterRead {
                meter,
                reading: None,
                error: Some(why.to_string()),
                skew_before_s: None,
                skew_after_s: None,
                relay: None,
            })
            .collect();
        let _ = req.reply.send(done);
    }

    fn open_request(
        &mut self,
        req: ReadRequest,
        ids: &[&str],
        before: Option<Vec<Option<f64>>>,
    ) -> Vec<usize> {
        let mut due = Vec::new();
        {
            let mut waiting = Vec::new();
            let mut done = Vec::new();
            if req.meters.is_empty() {
                waiting.extend(0..ids.len());
            }
            for m in &req.meters {
                match ids.iter().position(|id| id == m) {
                    Some(i) => waiting.push(i),
                    None => done.push(MeterRead {
                        meter: m.clone(),
                        reading: None,
                        error: Some("not a meter of this bus".into()),
                        skew_before_s: None,
                        skew_after_s: None,
                        relay: None,
                    }),
                }
            }
            due.extend(waiting.iter().copied());
            self.push(Open {
                waiting,
                done,
                reply: req.reply,
                before,
            });
        }
        due
    }

    fn push(&mut self, open: Open) {
        if open.waiting.is_empty() {
            let _ = open.reply.send(open.done);
        } else {
            self.open.push(open);
        }
    }

    /// Resolves when a request arrives (never when there is no channel or it is closed);
    /// the next [`OnDemand::take_new`] opens it.
    pub(super) async fn arrival(&mut self) {
        let Some(requests) = self.requests.as_mut() else {
            return std::future::pending().await;
        };
        match requests.recv().await {
            Some(req) => self.arrived.push(req),
            None => {
                self.requests = None;
                std::future::pending::<()>().await;
            }
        }
    }

    /// Meter `idx` was polled (its clock then `skew_s`, when read): answers every request that
    /// waited only for it.
    pub(super) fn polled(
        &mut self,
        idx: usize,
        meter: &str,
        reading: Option<&Reading>,
        error: Option<&str>,
        skew_s: Option<f64>,
    ) {
        if self.open.is_empty() {
            return;
        }
        for open in &mut self.open {
            if let Some(pos) = open.waiting.iter().position(|&w| w == idx) {
                open.waiting.swap_remove(pos);
                let before = open.before.as_ref();
                open.done.push(MeterRead {
                    meter: meter.to_string(),
                    reading: reading.cloned(),
                    error: error.map(str::to_string),
                    skew_before_s: before.and_then(|b| b.get(idx).copied().flatten()),
                    skew_after_s: before.and(skew_s),
                    relay: None,
                });
            }
        }
        let (finished, open): (Vec<Open>, Vec<Open>) = std::mem::take(&mut self.open)
            .into_iter()
            .partition(|o| o.waiting.is_empty());
        self.open = open;
        for f in finished {
            let _ = f.reply.send(f.done);
        }
    }
}
