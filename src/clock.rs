//! The one clock of the gateway: wall-clock milliseconds, RFC 3339 formatting, and the local
//! time zone its days and months are counted in ([`LocalTime`]).
//!
//! Everything that stamps data takes its time from here, and everything that computes
//! wall-clock boundaries (loss intervals, daily statistics, freezes) takes timestamps as
//! arguments, so tests can reason about time without sleeping. Timestamps are always UTC
//! milliseconds; a local day or month is computed from them with the time-zone database
//! ([`jiff`]), never by hand.
//!
//! It also says whether the wall clock can be trusted ([`sync_state`], [`ClockSync`]): whether
//! the system clock is synchronised (systemd-timesyncd's flag file, else the kernel's NTP state)
//! and whether it is at least the build date ([`BUILD_DATE_MS`]); and it notices a wall clock
//! that jumps against the monotonic clock ([`JumpWatch`]).

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ZonedDateTime};
use std::time::{SystemTime, UNIX_EPOCH};

/// The time zone whose midnights start the gateway's days and months (`[gateway] timezone`):
/// daily and monthly freezes, voltage-quality days, collection statistics, daily loss. A day
/// is `[local 00:00, next local 00:00)`, 23 or 25 hours long across a daylight-saving change;
/// where a zone skips midnight, the day starts at its first instant.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalTime {
    zone: TimeZone,
    name: String,
}

impl Default for LocalTime {
    /// UTC: the days the gateway counted before it had a time zone.
    fn default() -> Self {
        LocalTime::utc()
    }
}

impl LocalTime {
    pub fn utc() -> LocalTime {
        LocalTime {
            zone: TimeZone::UTC,
            name: "UTC".into(),
        }
    }

    /// An IANA zone by name (`Asia/Shanghai`); an error for a name the time-zone database
    /// does not know.
    pub fn named(name: &str) -> Result<LocalTime, String> {
        TimeZone::get(name)
            .map(|zone| LocalTime {
                zone,
                name: name.to_string(),
            })
            .map_err(|e| e.to_string())
    }

    /// A zone of its own at a fixed offset from UTC, to the second, named `name`. Only for
    /// `amr-gateway demo`, whose gateway lives in a zone where midnight comes a few seconds
    /// after it starts, so that its days stay real days of 24 hours; `[gateway] timezone`
    /// accepts IANA names only. An error for an offset beyond ±25:59:59.
    pub fn fixed_offset(offset_s: i32, name: &str) -> Result<LocalTime, String> {
        jiff::tz::Offset::from_seconds(offset_s)
            .map(|offset| LocalTime {
                zone: TimeZone::fixed(offset),
                name: name.to_string(),
            })
            .map_err(|e| e.to_string())
    }

    /// The system's zone: `TZ`, else `/etc/localtime`; UTC when neither names one.
    pub fn system() -> LocalTime {
        match TimeZone::try_system() {
            Ok(zone) => LocalTime {
                name: zone.iana_name().unwrap_or("UTC").to_string(),
                zone,
            },
            Err(_) => LocalTime::utc(),
        }
    }

    /// Every zone name the database knows (for "did you mean").
    pub fn names() -> Vec<String> {
        jiff::tz::db()
            .available()
            .map(|n| n.as_str().to_string())
            .collect()
    }

    /// The zone's name (`Asia/Shanghai`).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn zoned(&self, ts_ms: i64) -> ZonedDateTime {
        let ts = Timestamp::from_millisecond(ts_ms).unwrap_or(Timestamp::UNIX_EPOCH);
        ts.to_zoned_datetime(self.zone.clone())
    }

    fn start_of(&self, date: Date) -> i64 {
        date.to_zoned_datetime(self.zone.clone())
            .and_then(|z| z.start_of_day())
            .map(|z| z.timestamp().as_millisecond())
            .unwrap_or(0)
    }

    /// The local date at `ts_ms`.
    pub fn date(&self, ts_ms: i64) -> Date {
        self.zoned(ts_ms).date()
    }

    /// Start of the local day containing `ts_ms` (local midnight), UTC ms.
    pub fn day_start_ms(&self, ts_ms: i64) -> i64 {
        self.start_of(self.date(ts_ms))
    }

    /// Start of the local day after the one containing `ts_ms`, UTC ms.
    pub fn next_day_start_ms(&self, ts_ms: i64) -> i64 {
        let d = self.date(ts_ms);
        self.start_of(d.tomorrow().unwrap_or(d))
    }

    /// Start of the local month containing `ts_ms` (00:00 on the 1st), UTC ms.
    pub fn month_start_ms(&self, ts_ms: i64) -> i64 {
        self.start_of(self.date(ts_ms).first_of_month())
    }

    /// Start of the local month after the one containing `ts_ms`, UTC ms.
    pub fn next_month_start_ms(&self, ts_ms: i64) -> i64 {
        let last = self.date(ts_ms).last_of_month();
        self.start_of(last.tomorrow().unwrap_or(last))
    }

    /// The local day containing `ts_ms`, `2026-11-22`.
    pub fn day(&self, ts_ms: i64) -> String {
        self.date(ts_ms).to_string()
    }

    /// The local month containing `ts_ms`, `2026-11`.
    pub fn month(&self, ts_ms: i64) -> String {
        self.day(ts_ms)[..7].to_string()
    }

    /// True when `ts_ms` is the first instant of a local month.
    pub fn is_month_start(&self, ts_ms: i64) -> bool {
        self.month_start_ms(ts_ms) == ts_ms
    }

    /// Milliseconds since local midnight at `ts_ms`.
    pub fn since_midnight_ms(&self, ts_ms: i64) -> i64 {
        ts_ms - self.day_start_ms(ts_ms)
    }
}

/// Milliseconds since the Unix epoch, UTC.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The earliest time a sane wall clock can show: this release's build date, UTC ms. From
/// `SOURCE_DATE_EPOCH` (seconds) when the build sets it (reproducible builds, the Debian
/// package), else [`BUILD_DATE_FALLBACK`]. A box without a real-time clock boots in 1970 (or at
/// its last shutdown), which is before it.
pub const BUILD_DATE_MS: i64 = match option_env!("SOURCE_DATE_EPOCH") {
    Some(s) => parse_epoch_s(s) * 1000,
    None => BUILD_DATE_FALLBACK * 1000,
};

/// The build date used when `SOURCE_DATE_EPOCH` is not set: 2026-11-01T00:00:00Z. Move it
/// forward at a release.
pub const BUILD_DATE_FALLBACK: i64 = 1_793_491_200;

/// Decimal seconds at compile time; the fallback for anything else.
const fn parse_epoch_s(s: &str) -> i64 {
    let b = s.as_bytes();
    if b.is_empty() {
        return BUILD_DATE_FALLBACK;
    }
    let mut i = 0;
    let mut v: i64 = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            return BUILD_DATE_FALLBACK;
        }
        v = v * 10 + (b[i] - b'0') as i64;
        i += 1;
    }
    v
}

/// Where the synchronisation state came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncSource {
    /// `/run/systemd/timesync/synchronized` exists: systemd-timesyncd synchronised the clock
    /// since boot.
    Timesyncd,
    /// The kernel's NTP state (`adjtimex(2)`, read only): chrony, ntpd or timesyncd keep it.
    Kernel,
    /// Neither could be read (the flag file is absent and `adjtimex` is not allowed, e.g. by
    /// the unit's `ProtectClock=`): taken as not synchronised.
    Unknown,
}

impl SyncSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncSource::Timesyncd => "timesyncd",
            SyncSource::Kernel => "kernel",
            SyncSource::Unknown => "unknown",
        }
    }
}

/// Whether the system clock is synchronised, and by whose word. `synchronized` is what other
/// parts ask (the DL/T 645 meter-clock check compares meters only against a synchronised
/// gateway clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSync {
    pub synchronized: bool,
    pub source: SyncSource,
    /// The kernel's estimated error, microseconds (only from [`SyncSource::Kernel`]).
    pub est_error_us: Option<i64>,
}

/// The flag file systemd-timesyncd creates once it has synchronised the clock.
pub const TIMESYNCD_FLAG: &str = "/run/systemd/timesync/synchronized";

/// The system clock's synchronisation state now: the timesyncd flag file, else the kernel's
/// NTP state. Cheap (a `stat` and a system call); call it per tick, not per reading.
pub fn sync_state() -> ClockSync {
    if std::path::Path::new(TIMESYNCD_FLAG).exists() {
        return ClockSync {
            synchronized: true,
            source: SyncSource::Timesyncd,
            est_error_us: None,
        };
    }
    kernel_sync_state().unwrap_or(ClockSync {
        synchronized: false,
        source: SyncSource::Unknown,
        est_error_us: None,
    })
}

/// The kernel's view (`adjtimex` with no modes: reads, never sets): synchronised unless it
/// reports `TIME_ERROR` or the `STA_UNSYNC` status bit. `None` when the call is refused.
fn kernel_sync_state() -> Option<ClockSync> {
    // SAFETY: a zeroed timex with modes = 0 asks the kernel only to fill it in.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return None;
    }
    let synchronized = state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0;
    Some(ClockSync {
        synchronized,
        source: SyncSource::Kernel,
        est_error_us: Some(tx.esterror as i64),
    })
}

/// Whether the wall clock can be trusted to stamp data: at least the build date, and
/// synchronised when `require_synced` (`[gateway] require_synced_clock`).
pub fn clock_is_sane(now_ms: i64, sync: &ClockSync, require_synced: bool) -> bool {
    now_ms >= BUILD_DATE_MS && (sync.synchronized || !require_synced)
}

/// Milliseconds on the monotonic clock since the boot (`CLOCK_BOOTTIME`, which counts
/// suspend too); never jumps with the wall clock.
pub fn boot_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    // time_t and c_long are 32 bits on some ARM boxes.
    #[allow(clippy::unnecessary_cast)]
    let ms = ts.tv_sec as i64 * 1000 + ts.tv_nsec as i64 / 1_000_000;
    ms
}

/// Notices a wall clock that jumps: between two ticks the wall clock and the monotonic clock
/// should advance alike; a difference above the tolerance is a jump (forwards: positive).
#[derive(Debug, Clone)]
pub struct JumpWatch {
    last: Option<(i64, i64)>,
    tolerance_ms: i64,
}

impl JumpWatch {
    /// A watch reporting differences above `tolerance_ms`.
    pub fn new(tolerance_ms: i64) -> JumpWatch {
        JumpWatch {
            last: None,
            tolerance_ms,
        }
    }

    /// Feeds a tick (wall ms, monotonic ms); returns the jump, ms, when the wall clock moved
    /// more than the tolerance away from the monotonic one since the last tick.
    pub fn tick(&mut self, wall_ms: i64, mono_ms: i64) -> Option<i64> {
        let jump = self.last.and_then(|(w, m)| {
            let d = (wall_ms - w) - (mono_ms - m);
            (d.abs() > self.tolerance_ms).then_some(d)
        });
        self.last = Some((wall_ms, mono_ms));
        jump
    }
}

/// `2026-11-22T10:15:00.123Z` for a Unix time in milliseconds.
pub fn rfc3339_ms(ts_ms: i64) -> String {
    let secs = ts_ms.div_euclid(1000);
    let ms = ts_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Parses the format produced by [`rfc3339_ms`] (and plain `...Z` / `+00:00` variants).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut ms = 0;
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits: String = frac.chars().take_while(|c| c.is_ascii_digit()).collect();
        let mut scaled = format!("{digits:0<3}");
        scaled.truncate(3);
        ms = scaled.parse().ok()?;
        rest = &frac[digits.len()..];
    }
    let offset_s = match rest {
        "Z" | "z" | "+00:00" => 0,
        _ => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    let days = days_from_civil(y, mo, d);
    Some(((days * 86_400 + h * 3600 + mi * 60 + se - offset_s) * 1000) + ms)
}

/// Start of the UTC day containing `ts_ms`.
pub fn day_start_ms(ts_ms: i64) -> i64 {
    ts_ms - ts_ms.rem_euclid(86_400_000)
}

// Howard Hinnant's days <-> civil date algorithms.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_days_in_shanghai_start_at_16_utc() {
        let z = LocalTime::named("Asia/Shanghai").unwrap();
        let t = parse_rfc3339("2026-11-22T15:59:59.999Z").unwrap();
        assert_eq!(z.day(t), "2026-11-22");
        assert_eq!(z.day(t + 1), "2026-11-23");
        assert_eq!(rfc3339_ms(z.day_start_ms(t)), "2026-11-21T16:00:00.000Z");
        assert_eq!(
            rfc3339_ms(z.next_day_start_ms(t)),
            "2026-11-22T16:00:00.000Z"
        );
        let dec1 = parse_rfc3339("2026-11-30T16:00:00.000Z").unwrap();
        assert_eq!(z.month(dec1), "2026-12");
        assert_eq!(z.month(dec1 - 1), "2026-11");
        assert!(z.is_month_start(dec1) && !z.is_month_start(dec1 - 1));
        assert_eq!(
            z.month_start_ms(dec1 - 1),
            parse_rfc3339("2026-10-31T16:00:00Z").unwrap()
        );
        assert_eq!(z.next_month_start_ms(dec1 - 1), dec1);
        assert_eq!(z.since_midnight_ms(dec1 + 5_000), 5_000);
    }

    #[test]
    fn berlin_days_are_23_and_25_hours_across_dst() {
        let z = LocalTime::named("Europe/Berlin").unwrap();
        // 2026-03-29: clocks go 02:00 → 03:00 (CET → CEST).
        let spring = parse_rfc3339("2026-03-29T12:00:00Z").unwrap();
        let (s, e) = (z.day_start_ms(spring), z.next_day_start_ms(spring));
        assert_eq!(rfc3339_ms(s), "2026-03-28T23:00:00.000Z");
        assert_eq!(rfc3339_ms(e), "2026-03-29T22:00:00.000Z");
        assert_eq!(e - s, 23 * 3_600_000);
        // 2026-10-25: clocks go 03:00 → 02:00.
        let autumn = parse_rfc3339("2026-10-25T12:00:00Z").unwrap();
        let (s, e) = (z.day_start_ms(autumn), z.next_day_start_ms(autumn));
        assert_eq!(rfc3339_ms(s), "2026-10-24T22:00:00.000Z");
        assert_eq!(e - s, 25 * 3_600_000);
        assert_eq!(z.day(e - 1), "2026-10-25");
        assert_eq!(z.month(e), "2026-10");
    }

    #[test]
    fn unknown_zone_is_an_error_and_utc_is_the_default() {
        assert!(LocalTime::named("Asia/Shangai").is_err());
        let utc = LocalTime::default();
        assert_eq!(utc.name(), "UTC");
        let t = parse_rfc3339("2026-11-22T10:00:00Z").unwrap();
        assert_eq!(utc.day_start_ms(t), day_start_ms(t));
        assert!(LocalTime::names().iter().any(|n| n == "Asia/Shanghai"));
    }

    #[test]
    fn a_fixed_offset_to_the_second_moves_midnight() {
        // Local = UTC + 5:17:42, so local midnight is 18:42:18 UTC the day before.
        let z = LocalTime::fixed_offset(5 * 3600 + 17 * 60 + 42, "demo").unwrap();
        assert_eq!(z.name(), "demo");
        let t = parse_rfc3339("2026-11-22T18:42:17.999Z").unwrap();
        assert_eq!(z.day(t), "2026-11-22");
        assert_eq!(z.day(t + 1), "2026-11-23");
        assert_eq!(
            rfc3339_ms(z.day_start_ms(t + 1)),
            "2026-11-22T18:42:18.000Z"
        );
        assert_eq!(z.next_day_start_ms(t) - z.day_start_ms(t), 86_400_000);
        assert_eq!(z.since_midnight_ms(t + 1_001), 1_000);
        let west = LocalTime::fixed_offset(-(23 * 3600 + 59), "west").unwrap();
        // 18:42:18 UTC less 23:00:59 is 19:41:19 local, the day before.
        assert_eq!(west.day(t + 1), "2026-11-21");
        assert_eq!(
            west.since_midnight_ms(t + 1),
            (19 * 3600 + 41 * 60 + 19) * 1000
        );
        assert!(LocalTime::fixed_offset(26 * 3600, "too far").is_err());
    }

    #[test]
    fn a_clock_before_the_build_date_is_not_sane() {
        let synced = ClockSync {
            synchronized: true,
            source: SyncSource::Kernel,
            est_error_us: None,
        };
        let unsynced = ClockSync {
            synchronized: false,
            source: SyncSource::Unknown,
            est_error_us: None,
        };
        assert!(
            !clock_is_sane(0, &synced, false),
            "1970 is before the build"
        );
        assert!(!clock_is_sane(BUILD_DATE_MS - 1, &synced, false));
        assert!(clock_is_sane(BUILD_DATE_MS, &unsynced, false));
        assert!(!clock_is_sane(BUILD_DATE_MS, &unsynced, true));
        assert!(clock_is_sane(BUILD_DATE_MS + 1, &synced, true));
        assert_eq!(parse_epoch_s("1700000000"), 1_700_000_000);
        assert_eq!(parse_epoch_s("x"), BUILD_DATE_FALLBACK);
        assert_eq!(
            rfc3339_ms(BUILD_DATE_FALLBACK * 1000),
            "2026-11-01T00:00:00.000Z"
        );
        // Whatever this machine says, asking does not fail.
        let _ = sync_state();
        assert!(boot_ms() > 0);
    }

    #[test]
    fn a_jump_is_the_wall_clock_moving_against_the_monotonic_one() {
        let mut w = JumpWatch::new(5_000);
        assert_eq!(w.tick(1_000_000, 10), None);
        assert_eq!(w.tick(1_060_000, 60_010), None, "in step");
        assert_eq!(w.tick(1_063_000, 120_010), Some(-57_000), "backwards");
        assert_eq!(w.tick(5_000_000, 180_010), Some(3_877_000), "forwards");
        assert_eq!(w.tick(5_060_004, 240_010), None, "within tolerance");
    }

    #[test]
    fn formats_and_parses_round_trip() {
        let ts = 1_795_000_123_456;
        let s = rfc3339_ms(ts);
        assert!(s.ends_with('Z'));
        assert_eq!(parse_rfc3339(&s), Some(ts));
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800_000));
    }
}
