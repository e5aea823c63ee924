//! Liveness: what systemd is told about the running daemon, and the proof behind it.
//!
//! Each long-running task (the store writer, each bus) holds a [`Heartbeat`] and calls
//! [`Heartbeat::beat`] whenever it made progress (a commit, a poll cycle) — one atomic
//! increment, cheap enough for every loop iteration. The gateway's supervision holds the
//! [`Liveness`] and, through the notify protocol (`sd_notify(3)`, via the `sd-notify` crate):
//!
//! - says `READY=1` once the store is open, the buses are started and the uplink runs;
//! - keeps a `STATUS=` line (meters online, backlog, broker) up to date;
//! - sends `WATCHDOG=1` every half watchdog interval (`WATCHDOG_USEC`), but only when every
//!   watched task beat since the last keep-alive — so a stuck task stops the keep-alives and
//!   systemd restarts the daemon;
//! - says `STOPPING=1` when the gateway begins to stop.
//!
//! A task is watched from its first beat on: before it, it is still starting. Without
//! `NOTIFY_SOCKET` (tests, a foreground run in a terminal) nothing is sent and nothing ticks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, warn};

/// How often the status line is refreshed when it changed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// One task's progress counter. Clones share the counter.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Heartbeat {
    /// A heartbeat that no [`Liveness`] watches (tests, tools).
    pub fn unwatched() -> Heartbeat {
        Heartbeat::default()
    }

    /// The task made progress.
    pub fn beat(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The watched tasks by name, with the beat count each had at the last keep-alive.
#[derive(Debug, Default)]
struct Watched {
    tasks: Vec<(String, Heartbeat, u64)>,
}

impl Watched {
    /// Whether every task that has started beat since the last call that said so; the names
    /// of those that did not. On success the counts are remembered for the next call.
    fn all_progressed(&mut self) -> Result<(), Vec<String>> {
        let stalled: Vec<String> = self
            .tasks
            .iter()
            .filter(|(_, hb, seen)| {
                let now = hb.count();
                now > 0 && now == *seen
            })
            .map(|(name, _, _)| name.clone())
            .collect();
        if !stalled.is_empty() {
            return Err(stalled);
        }
        for (_, hb, seen) in &mut self.tasks {
            *seen = hb.count();
        }
        Ok(())
    }
}

/// The daemon's side of the notify protocol, and the registry of watched tasks.
#[derive(Debug)]
pub struct Liveness {
    watched: Mutex<Watched>,
    /// Whether a service manager listens (`NOTIFY_SOCKET` is set).
    notify: bool,
    /// Half the watchdog interval, when systemd asked for keep-alives.
    keepalive_every: Option<Duration>,
    next_keepalive: Instant,
    next_status: Instant,
    status: String,
    stalled_reported: bool,
}

impl Liveness {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (and `WATCHDOG_PID`) from the environment.
    pub fn from_environment() -> Liveness {
        let notify = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let watchdog = if notify {
            sd_notify::watchdog_enabled()
        } else {
            None
        };
        Liveness::new(notify, watchdog)
    }

    fn new(notify: bool, watchdog: Option<Duration>) -> Liveness {
        let keepalive_every = watchdog
            .filter(|w| !w.is_zero())
            .map(|w| (w / 2).max(Duration::from_millis(1)));
        let now = Instant::now();
        Liveness {
            watched: Mutex::new(Watched::default()),
            notify,
            keepalive_every,
            next_keepalive: now + keepalive_every.unwrap_or(Duration::ZERO),
            next_status: now,
            status: String::new(),
            stalled_reported: false,
        }
    }

    /// A heartbeat for the task `name` (e.g. "the store writer", "bus `rs485-1`"), watched
    /// from its first beat.
    pub fn register(&self, name: impl Into<String>) -> Heartbeat {
        let hb = Heartbeat::default();
        self.watched
            .lock()
            .unwrap()
            .tasks
            .push((name.into(), hb.clone(), 0));
        hb
    }

    /// The gateway is up: store open, buses started, uplink running.
    pub fn ready(&mut self, status: &str) {
        self.status = status.to_string();
        self.send(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(status),
        ]);
        self.next_status = Instant::now() + STATUS_EVERY;
    }

    /// Waits until a status refresh or a keep-alive is due; never returns without a service
    /// manager. Cancel-safe (for `tokio::select!`).
    pub async fn due(&self) {
        if !self.notify {
            return std::future::pending().await;
        }
        let next = match self.keepalive_every {
            Some(_) => self.next_status.min(self.next_keepalive),
            None => self.next_status,
        };
        tokio::time::sleep_until(next).await;
    }

    /// Does what is due: sends `status` if it changed, and a keep-alive if every watched task
    /// beat since the last one.
    pub fn report(&mut self, status: &str) {
        let now = Instant::now();
        if now >= self.next_status {
            self.next_status = now + STATUS_EVERY;
            if status != self.status {
                self.status = status.to_string();
                self.send(&[sd_notify::NotifyState::Status(status)]);
            }
        }
        if let Some(every) = self.keepalive_every
            && now >= self.next_keepalive
        {
            self.next_keepalive = now + every;
            let progressed = self.watched.lock().unwrap().all_progressed();
            match progressed {
                Ok(()) => {
                    self.stalled_reported = false;
                    self.send(&[sd_notify::NotifyState::Watchdog]);
                }
                Err(stalled) => {
                    // Said once per stall: systemd's watchdog decides what happens next.
                    if !self.stalled_reported {
                        self.stalled_reported = true;
                        warn!(
                            "no progress from {} since the last watchdog keep-alive; \
                             withholding it (systemd restarts the gateway if this lasts)",
                            stalled.join(", ")
                        );
                    }
                }
            }
        }
    }

    /// The gateway begins to stop.
    pub fn stopping(&self) {
        self.send(&[sd_notify::NotifyState::Stopping]);
    }

    /// Tells the service manager, if there is one, that the daemon as a whole begins to stop
    /// (SIGTERM) — as opposed to one gateway run ending for a reload.
    pub fn tell_stopping() {
        Liveness::from_environment().stopping();
    }

    /// Tells the service manager, if there is one, that the daemon reloads its configuration
    /// (SIGHUP with a valid file); the next run's `READY=1` ends the reload.
    pub fn tell_reloading() {
        Liveness::from_environment().send(&[sd_notify::NotifyState::Reloading]);
    }

    fn send(&self, states: &[sd_notify::NotifyState]) {
        if !self.notify {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            debug!(error = %e, "cannot notify the service manager");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_that_stopped_beating_is_named_and_one_that_never_began_is_not() {
        let liveness = Liveness::new(false, None);
        let writer = liveness.register("the store writer");
        let _bus = liveness.register("bus `b`");
        let mut watched = liveness.watched.lock().unwrap();
        // Nobody has begun: nothing is stalled.
        assert_eq!(watched.all_progressed(), Ok(()));
        writer.beat();
        assert_eq!(watched.all_progressed(), Ok(()));
        // No beat since the last keep-alive.
        assert_eq!(
            watched.all_progressed(),
            Err(vec!["the store writer".to_string()])
        );
        // Still stalled: a failed check does not move the mark.
        assert!(watched.all_progressed().is_err());
        writer.beat();
        assert_eq!(watched.all_progressed(), Ok(()));
    }

    #[test]
    fn half_the_watchdog_interval_and_nothing_without_a_manager() {
        let l = Liveness::new(true, Some(Duration::from_secs(60)));
        assert_eq!(l.keepalive_every, Some(Duration::from_secs(30)));
        let l = Liveness::new(true, Some(Duration::ZERO));
        assert_eq!(l.keepalive_every, None);
    }
}
