//! The probe budget of a bus: how much of its time dead meters may cost.
//!
//! A missing reply costs the whole timeout, so dead meters are the most expensive thing on a
//! bus. Every poll that ends without an answer is booked here with the time it took; a probe
//! of an offline meter is only started when the dead time booked within the sliding window,
//! plus the probe's expected cost (what the last poll without an answer took: the timeout and,
//! on RTU links, the drain window after it), stays within `max_probe_share` of the window. Otherwise the probe waits until enough old dead time has left the window.
//!
//! The failed polls that take a meter offline are booked but never deferred (there are at most
//! `failures_to_offline` of them per meter); only probes are.

use super::health::OfflinePolicy;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// Dead time of one bus over a sliding window, and when the next probe may start.
#[derive(Debug, Clone)]
pub struct ProbeBudget {
    share: f64,
    window: Duration,
    /// (end of the failed poll, its duration), oldest first.
    spent: VecDeque<(Instant, Duration)>,
    /// What the next probe of a dead meter is expected to cost: the last failed poll's time.
    probe_cost: Duration,
}

impl ProbeBudget {
    /// The budget of a bus whose requests time out after `timeout`. A missing reply costs the
    /// timeout and then, on RTU links, a drain window of the same length (a late reply must not
    /// answer the next request), so a probe is first expected to cost twice the timeout. The
    /// window is stretched so that its allowance holds at least one probe (else a slow bus
    /// could never probe).
    pub fn new(policy: &OfflinePolicy, timeout: Duration) -> ProbeBudget {
        let share = policy.max_probe_share.clamp(0.0, 1.0);
        let probe_cost = timeout * 2;
        let mut window = policy.probe_window;
        if share > 0.0 && share < 1.0 {
            window = window.max(probe_cost.div_f64(share));
        }
        ProbeBudget {
            share,
            window,
            spent: VecDeque::new(),
            probe_cost,
        }
    }

    /// The expected cost of the next probe: what the last poll without an answer took.
    pub fn probe_cost(&self) -> Duration {
        self.probe_cost
    }

    /// The window the share is measured over.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Dead time the window allows.
    pub fn allowance(&self) -> Duration {
        self.window.mul_f64(self.share)
    }

    /// Books a poll that ended at `end` without an answer, after `took`.
    pub fn book(&mut self, end: Instant, took: Duration) {
        self.spent.push_back((end, took));
        self.probe_cost = took;
    }

    /// Dead time booked within the window ending at `now` (entries that end inside it count
    /// whole: the estimate errs on the side of the live meters).
    pub fn spent(&mut self, now: Instant) -> Duration {
        self.forget_before(now);
        self.spent.iter().map(|(_, d)| *d).sum()
    }

    fn forget_before(&mut self, now: Instant) {
        while let Some(&(end, _)) = self.spent.front() {
            if end + self.window <= now {
                self.spent.pop_front();
            } else {
                break;
            }
        }
    }

    /// The earliest instant, not before `now`, at which a probe costing up to `cost` fits the
    /// budget.
    pub fn next_probe_at(&mut self, now: Instant, cost: Duration) -> Instant {
        if self.share >= 1.0 {
            return now;
        }
        let allowance = self.allowance();
        // An empty window always holds one probe (it was sized for one; a probe that turned
        // out longer must not starve the meter for ever).
        let fits = |spent: Duration| spent.is_zero() || spent + cost <= allowance;
        let mut spent = self.spent(now);
        if self.share > 0.0 && fits(spent) {
            return now;
        }
        for &(end, took) in &self.spent {
            spent = spent.saturating_sub(took);
            if self.share > 0.0 && fits(spent) {
                return (end + self.window).max(now);
            }
        }
        // Share 0: no probes, but never before a full window (the caller asks again then).
        now + self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(share: f64, window_s: u64) -> OfflinePolicy {
        OfflinePolicy {
            max_probe_share: share,
            probe_window: Duration::from_secs(window_s),
            ..OfflinePolicy::default()
        }
    }

    #[test]
    fn probes_fit_until_the_share_is_used_then_wait_for_the_window_to_slide() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut b = ProbeBudget::new(&policy(0.1, 60), s(1));
        assert_eq!(b.allowance(), s(6));
        for k in 0..5 {
            assert_eq!(b.next_probe_at(t0 + s(k), s(1)), t0 + s(k));
            b.book(t0 + s(k) + s(1), s(1));
        }
        // 5 s spent: one more 1 s probe fits, a second does not.
        let now = t0 + s(6);
        assert_eq!(b.next_probe_at(now, s(1)), now);
        b.book(t0 + s(7), s(1));
        let next = b.next_probe_at(t0 + s(7), s(1));
        // The first booking (ended at t0 + 1 s) leaves the window at t0 + 61 s.
        assert_eq!(next, t0 + s(61));
        assert_eq!(b.spent(t0 + s(61)), s(5));
        assert_eq!(b.next_probe_at(t0 + s(61), s(1)), t0 + s(61));
    }

    #[test]
    fn the_window_always_holds_one_probe() {
        let b = ProbeBudget::new(&policy(0.1, 5), Duration::from_secs(2));
        // A probe: the timeout and the drain window after it.
        assert_eq!(b.probe_cost(), Duration::from_secs(4));
        assert_eq!(b.window(), Duration::from_secs(40));
        assert_eq!(b.allowance(), Duration::from_secs(4));
    }

    #[test]
    fn a_probe_longer_than_the_allowance_still_runs_once_the_window_is_empty() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut b = ProbeBudget::new(&policy(0.1, 60), s(1));
        b.book(t0 + s(1), s(30));
        assert_eq!(b.next_probe_at(t0 + s(2), s(30)), t0 + s(61));
        assert_eq!(b.next_probe_at(t0 + s(61), s(30)), t0 + s(61));
    }

    #[test]
    fn share_one_never_defers() {
        let t0 = Instant::now();
        let mut b = ProbeBudget::new(&policy(1.0, 60), Duration::from_secs(1));
        for k in 0..100 {
            b.book(t0, Duration::from_secs(k));
        }
        assert_eq!(b.next_probe_at(t0, Duration::from_secs(1)), t0);
    }
}
