//! Reads on demand (the headend's `read` command, 点抄): a request names meters of one bus;
//! the bus task makes them due now, so they are read between scheduled polls, one transaction
//! at a time like every poll, and answers once each has been polled. The readings also go out
//! as usual.

use crate::model::{MeterId, Reading};
use tokio::sync::{mpsc, oneshot};

/// A request to read meters of one bus now.
#[derive(Debug)]
pub struct ReadRequest {
    /// The meters (of this bus) to read; empty: every meter of the bus.
    pub meters: Vec<MeterId>,
    pub reply: oneshot::Sender<Vec<MeterRead>>,
}

/// What one on-demand read of a meter gave.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterRead {
    pub meter: MeterId,
    /// The reading, when the meter answered.
    pub reading: Option<Reading>,
    /// Why there is no reading (or a partial one).
    pub error: Option<String>,
}

/// The open requests of one bus task.
pub(super) struct OnDemand {
    requests: Option<mpsc::Receiver<ReadRequest>>,
    /// Requests received while the bus waited, not yet opened.
    arrived: Vec<ReadRequest>,
    open: Vec<Open>,
}

struct Open {
    waiting: Vec<usize>,
    done: Vec<MeterRead>,
    reply: oneshot::Sender<Vec<MeterRead>>,
}

impl OnDemand {
    pub(super) fn new(requests: Option<mpsc::Receiver<ReadRequest>>) -> OnDemand {
        OnDemand {
            requests,
            arrived: Vec::new(),
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
                    }),
                }
            }
            due.extend(waiting.iter().copied());
            self.push(Open {
                waiting,
                done,
                reply: req.reply,
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

    /// Meter `idx` was polled: answers every request that waited only for it.
    pub(super) fn polled(
        &mut self,
        idx: usize,
        meter: &str,
        reading: Option<&Reading>,
        error: Option<&str>,
    ) {
        if self.open.is_empty() {
            return;
        }
        for open in &mut self.open {
            if let Some(pos) = open.waiting.iter().position(|&w| w == idx) {
                open.waiting.swap_remove(pos);
                open.done.push(MeterRead {
                    meter: meter.to_string(),
                    reading: reading.cloned(),
                    error: error.map(str::to_string),
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
