//! Meter health: success rate, latency, error counters, online/offline state and the backoff
//! that keeps a dead meter from eating its bus.

use crate::model::{HealthChange, MeterHealth, PollOutcome};
use std::time::Duration;

/// The offline policy of a bus.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OfflinePolicy {
    /// Consecutive failed polls after which a meter is offline.
    pub failures_to_offline: u32,
    /// First wait between probes of an offline meter; doubles after every failed probe...
    pub first_probe: Duration,
    /// ...up to this ceiling.
    pub max_probe: Duration,
    /// Largest share of a bus's time that polls without an answer (mostly probes of offline
    /// meters) may take over `probe_window`; probes beyond it are deferred. See
    /// [`super::ProbeBudget`].
    pub max_probe_share: f64,
    /// The sliding window `max_probe_share` is measured over (stretched to hold one timeout).
    pub probe_window: Duration,
    /// A register that a meter refuses with exception 01 or 02 even when read alone is tried
    /// this many times, then no longer read (the meter does not have it).
    pub unsupported_attempts: u32,
    /// A block limit learned from a meter is re-tried (the model's own blocks read again)
    /// after this long, so a wrong lesson — line noise taken for a refusal — heals itself; a
    /// true limit costs one refused read per period. Default one day.
    pub relearn_after: Duration,
}

impl Default for OfflinePolicy {
    fn default() -> Self {
        OfflinePolicy {
            failures_to_offline: 3,
            first_probe: Duration::from_secs(10),
            max_probe: Duration::from_secs(600),
            max_probe_share: 0.10,
            probe_window: Duration::from_secs(60),
            unsupported_attempts: 3,
            relearn_after: Duration::from_secs(86_400),
        }
    }
}

/// The bus's rules over a meter's health: how a poll is booked, when the meter goes offline
/// and how its probes back off.
impl MeterHealth {
    pub fn new(policy: &OfflinePolicy) -> Self {
        MeterHealth {
            online: None,
            consecutive_failures: 0,
            polls: 0,
            successes: 0,
            timeouts: 0,
            crc_errors: 0,
            wrong_unit: 0,
            exceptions: 0,
            latency_ms: None,
            last_ok_ms: None,
            last_error: None,
            probe_interval: policy.first_probe,
        }
    }

    /// Books one poll; returns whether the meter went online or offline.
    pub fn record(
        &mut self,
        outcome: PollOutcome,
        latency: Duration,
        now_ms: i64,
        error: Option<String>,
        policy: &OfflinePolicy,
    ) -> HealthChange {
        self.polls += 1;
        match outcome {
            PollOutcome::Timeout => self.timeouts += 1,
            PollOutcome::BadCrc => self.crc_errors += 1,
            PollOutcome::WrongUnit => self.wrong_unit += 1,
            PollOutcome::Exception | PollOutcome::Partial => self.exceptions += 1,
            PollOutcome::Ok | PollOutcome::Failed => {}
        }
        if outcome.answered() {
            self.successes += 1;
            self.consecutive_failures = 0;
            self.last_ok_ms = Some(now_ms);
            let ms = latency.as_secs_f64() * 1000.0;
            self.latency_ms = Some(match self.latency_ms {
                Some(avg) => avg * 0.8 + ms * 0.2,
                None => ms,
            });
            self.probe_interval = policy.first_probe;
            if outcome == PollOutcome::Ok {
                self.last_error = None;
            } else {
                self.last_error = error;
            }
            let was = self.online.replace(true);
            if was != Some(true) {
                return HealthChange::WentOnline;
            }
            return HealthChange::None;
        }
        self.consecutive_failures += 1;
        self.last_error = error;
        if self.online == Some(false) {
            self.probe_interval = (self.probe_interval * 2).min(policy.max_probe);
            return HealthChange::None;
        }
        if self.consecutive_failures >= policy.failures_to_offline {
            self.online = Some(false);
            self.probe_interval = policy.first_probe;
            return HealthChange::WentOffline;
        }
        HealthChange::None
    }
}

impl MeterHealth {
    /// The bus's device cannot be opened or has vanished: the meter cannot be reached at all,
    /// so it is offline at once (not after `failures_to_offline` polls), with `error` (naming
    /// the device) as its last error. Returns whether it went offline now.
    pub fn link_lost(&mut self, error: String, policy: &OfflinePolicy) -> HealthChange {
        self.consecutive_failures += 1;
        self.last_error = Some(error);
        if self.online == Some(false) {
            return HealthChange::None;
        }
        self.online = Some(false);
        self.probe_interval = policy.first_probe;
        HealthChange::WentOffline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goes_offline_after_failures_and_backs_off_then_recovers() {
        let p = OfflinePolicy::default();
        let mut h = MeterHealth::new(&p);
        let z = Duration::ZERO;
        assert_eq!(
            h.record(PollOutcome::Ok, z, 1, None, &p),
            HealthChange::WentOnline
        );
        assert_eq!(
            h.record(PollOutcome::Timeout, z, 2, None, &p),
            HealthChange::None
        );
        assert_eq!(
            h.record(PollOutcome::Timeout, z, 3, None, &p),
            HealthChange::None
        );
        assert_eq!(
            h.record(PollOutcome::Timeout, z, 4, None, &p),
            HealthChange::WentOffline
        );
        assert_eq!(h.probe_interval, p.first_probe);
        for _ in 0..20 {
            h.record(PollOutcome::Timeout, z, 5, None, &p);
        }
        assert_eq!(h.probe_interval, p.max_probe);
        assert_eq!(
            h.record(PollOutcome::Ok, z, 6, None, &p),
            HealthChange::WentOnline
        );
        assert_eq!(h.probe_interval, p.first_probe);
        assert_eq!(h.timeouts, 23);
        assert_eq!(h.last_ok_ms, Some(6));
    }

    #[test]
    fn a_lost_link_takes_the_meter_offline_at_once() {
        let p = OfflinePolicy::default();
        let mut h = MeterHealth::new(&p);
        let e = "cannot open /dev/ttyUSB0: No such file or directory".to_string();
        assert_eq!(h.link_lost(e.clone(), &p), HealthChange::WentOffline);
        assert_eq!(h.online, Some(false));
        assert_eq!(h.link_lost(e.clone(), &p), HealthChange::None);
        assert_eq!(h.last_error, Some(e));
    }
}
