//! Meter clocks: when a bus sends its daily broadcast time sync (a pure decision with the
//! clock passed in: never within five minutes of local midnight, never while the gateway's own
//! clock is unsynchronised, once per local day), how the gateway knows its clock is right, and
//! how a meter's calendar time becomes a skew in seconds.
//!
//! DL/T 645-2007 (broadcast time sync, 08H): meters take it only when their clock is within
//! ±5 minutes of the time sent, and not around midnight, when they freeze their daily data.
//! A meter further off must have its clock set on site; the `clock_skew` alarm names it.

use crate::clock::LocalTime;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// No sync within this many seconds of local midnight (either side).
pub const MIDNIGHT_GUARD_S: i64 = 300;
/// Meters take a broadcast sync only within this many seconds of their own clock.
pub const BROADCAST_LIMIT_S: f64 = crate::model::BROADCAST_SYNC_LIMIT_S;
/// The default local time of the daily sync, minutes after midnight: 03:07, between two
/// 15-minute load-curve points and at least 5 minutes from each, so a correction of up to five
/// minutes never moves a meter's clock across a curve capture (nor across midnight).
pub const DEFAULT_AT_MINUTE: u16 = 3 * 60 + 7;
/// How often each meter's own items (clock, status word, event counters) are read by default.
pub const DEFAULT_ITEMS_INTERVAL: Duration = Duration::from_secs(900);
/// systemd-timesyncd's mark that the system clock is synchronised.
pub const TIMESYNCD_MARK: &str = "/run/systemd/timesync/synchronized";

/// Whether the gateway's own clock is synchronised (NTP, GPS...): asked before every sync.
pub type ClockCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// The clock side of a bus: its daily broadcast time sync and how often the meters' own items
/// are read.
#[derive(Clone)]
pub struct TimeSync {
    /// Local time of the daily sync, minutes after midnight (`[time_sync] at`); `None`: off.
    pub at_minute: Option<u16>,
    /// The zone the meters keep their clocks in (`[gateway] timezone`).
    pub zone: LocalTime,
    /// Whether the gateway's clock can be trusted right now.
    pub clock_synchronised: ClockCheck,
    /// How often each meter's clock, status word and event counters are read
    /// (`[time_sync] read_interval_s`); `None`: never (a bus outside the daemon: tools,
    /// benchmarks).
    pub items_interval: Option<Duration>,
}

impl Default for TimeSync {
    /// Off: no sync, no clocks read, in UTC, the gateway clock never trusted.
    fn default() -> Self {
        TimeSync {
            at_minute: None,
            zone: LocalTime::utc(),
            clock_synchronised: Arc::new(|| false),
            items_interval: None,
        }
    }
}

impl fmt::Debug for TimeSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeSync")
            .field("at_minute", &self.at_minute)
            .field("zone", &self.zone.name())
            .field("items_interval", &self.items_interval)
            .finish()
    }
}

impl PartialEq for TimeSync {
    fn eq(&self, other: &Self) -> bool {
        self.at_minute == other.at_minute
            && self.zone == other.zone
            && self.items_interval == other.items_interval
    }
}

/// What the schedule says at a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncDecision {
    /// Send the broadcast now.
    Now,
    /// Not now, and why (for the log and the headend's `time_sync` command).
    Wait(&'static str),
}

/// Why a sync is refused near midnight.
pub const NEAR_MIDNIGHT: &str =
    "within five minutes of local midnight, when meters freeze their daily data";
/// Why a sync is refused without a trusted clock.
pub const UNSYNCHRONISED: &str = "the gateway's own clock is not synchronised";

/// Whether a sync may be sent at `now_ms` at all (the headend's command asks this): never near
/// local midnight, never with an unsynchronised gateway clock.
pub fn may_sync(zone: &LocalTime, now_ms: i64, clock_synchronised: bool) -> SyncDecision {
    if !clock_synchronised {
        return SyncDecision::Wait(UNSYNCHRONISED);
    }
    if near_midnight(zone, now_ms) {
        return SyncDecision::Wait(NEAR_MIDNIGHT);
    }
    SyncDecision::Now
}

/// The daily schedule: due once per local day, from `at_minute` on, when [`may_sync`] allows;
/// `last_ms`: when the bus last sent one.
pub fn daily_sync(
    at_minute: Option<u16>,
    zone: &LocalTime,
    now_ms: i64,
    last_ms: Option<i64>,
    clock_synchronised: bool,
) -> SyncDecision {
    let Some(at) = at_minute else {
        return SyncDecision::Wait("daily time sync is off");
    };
    if last_ms.is_some_and(|last| zone.day_start_ms(last) == zone.day_start_ms(now_ms)) {
        return SyncDecision::Wait("already sent today");
    }
    if zone.since_midnight_ms(now_ms) < i64::from(at) * 60_000 {
        return SyncDecision::Wait("not yet time today");
    }
    may_sync(zone, now_ms, clock_synchronised)
}

/// True within [`MIDNIGHT_GUARD_S`] of a local midnight.
pub fn near_midnight(zone: &LocalTime, now_ms: i64) -> bool {
    let guard = MIDNIGHT_GUARD_S * 1000;
    zone.since_midnight_ms(now_ms) <= guard || zone.next_day_start_ms(now_ms) - now_ms <= guard
}

/// True when a configured time of day (minutes after midnight) is within five minutes of
/// midnight (check-config refuses it).
pub fn at_near_midnight(minute: u16) -> bool {
    let guard = (MIDNIGHT_GUARD_S / 60) as u16;
    minute <= guard || minute >= 24 * 60 - guard
}

/// The production check: systemd-timesyncd's mark exists.
pub fn timesyncd_synchronised() -> bool {
    Path::new(TIMESYNCD_MARK).exists()
}

/// The zone's offset from UTC at `ts_ms`, seconds (local wall clock − UTC).
pub fn utc_offset_s(zone: &LocalTime, ts_ms: i64) -> i64 {
    let day = zone.day(ts_ms);
    let mut parts = day.split('-').map(|p| p.parse::<i64>().unwrap_or(1));
    let (y, m, d) = (
        parts.next().unwrap_or(1970),
        parts.next().unwrap_or(1),
        parts.next().unwrap_or(1),
    );
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    days * 86_400 - zone.day_start_ms(ts_ms).div_euclid(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-29 in Shanghai (UTC+8): local midnight is 2026-11-28T16:00Z.
    const MIDNIGHT: i64 = 1_764_345_600_000;
    const MIN: i64 = 60_000;

    fn shanghai() -> LocalTime {
        LocalTime::named("Asia/Shanghai").unwrap()
    }

    #[test]
    fn the_offset_of_a_zone() {
        assert_eq!(utc_offset_s(&shanghai(), MIDNIGHT + 5 * MIN), 8 * 3600);
        assert_eq!(utc_offset_s(&LocalTime::utc(), MIDNIGHT), 0);
        assert_eq!(shanghai().since_midnight_ms(MIDNIGHT), 0);
    }

    #[test]
    fn once_a_day_from_its_time_on() {
        let z = shanghai();
        let at = Some(DEFAULT_AT_MINUTE);
        let at_0307 = MIDNIGHT + 187 * MIN;
        assert_eq!(
            daily_sync(at, &z, at_0307 - MIN, None, true),
            SyncDecision::Wait("not yet time today")
        );
        assert_eq!(daily_sync(at, &z, at_0307, None, true), SyncDecision::Now);
        // Later the same day (the gateway was off at 03:07): still due, once.
        assert_eq!(
            daily_sync(at, &z, at_0307 + 600 * MIN, None, true),
            SyncDecision::Now
        );
        assert_eq!(
            daily_sync(at, &z, at_0307 + 600 * MIN, Some(at_0307), true),
            SyncDecision::Wait("already sent today")
        );
        // The next day again.
        assert_eq!(
            daily_sync(at, &z, at_0307 + 1440 * MIN, Some(at_0307), true),
            SyncDecision::Now
        );
        assert_eq!(
            daily_sync(None, &z, at_0307, None, true),
            SyncDecision::Wait("daily time sync is off")
        );
    }

    #[test]
    fn never_with_an_unsynchronised_clock() {
        let z = shanghai();
        let t = MIDNIGHT + 600 * MIN;
        assert_eq!(
            daily_sync(Some(DEFAULT_AT_MINUTE), &z, t, None, false),
            SyncDecision::Wait(UNSYNCHRONISED)
        );
        assert_eq!(may_sync(&z, t, false), SyncDecision::Wait(UNSYNCHRONISED));
    }

    #[test]
    fn never_near_midnight() {
        let z = shanghai();
        // A sync due since 00:01 is held back until 00:05 has passed...
        for (t, want) in [
            (MIDNIGHT + MIN, false),
            (MIDNIGHT + 5 * MIN, false),
            (MIDNIGHT + 5 * MIN + 1000, true),
            // ... and refused from 23:55 on.
            (MIDNIGHT + 1434 * MIN, true),
            (MIDNIGHT + 1435 * MIN, false),
            (MIDNIGHT + 1439 * MIN, false),
        ] {
            let d = daily_sync(Some(1), &z, t, None, true);
            assert_eq!(d == SyncDecision::Now, want, "{t}: {d:?}");
            if !want {
                assert_eq!(d, SyncDecision::Wait(NEAR_MIDNIGHT));
            }
            assert_eq!(may_sync(&z, t, true) == SyncDecision::Now, want);
        }
        assert!(at_near_midnight(0) && at_near_midnight(5) && at_near_midnight(1435));
        assert!(!at_near_midnight(6) && !at_near_midnight(1434));
        assert!(!at_near_midnight(DEFAULT_AT_MINUTE));
    }
}
