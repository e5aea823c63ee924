//! The gateway's own health, gathered for the retained `{prefix}/{gateway}/health` message:
//! why this process started (a clean stop, a crash, a power loss), its CPU and memory (from
//! `/proc/self` only: the unit's `ProcSubset=pid` hides the rest of `/proc`), the data
//! directory's free space and its low watermark, the store and the backlog, each bus's cycle
//! time, success rate and meters online (a [`Tally`] the store writer keeps of the bus
//! events), the clock, and the counters of rejected commands and dropped readings.
//!
//! It also keeps the clock honest ([`ClockWatch`]): whether it is sane, and when it jumps.
//! What is gathered is rendered by `uplink::contract::health_payload`; the publisher sends it.

use crate::clock::{self, ClockSync, JumpWatch};
use crate::model::BusEvent;
use crate::uplink::UplinkState;
use crate::uplink::contract::{BusHealth, ClockHealth, HealthReport, StartReason};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

/// The meta value of [`MetaKey::CleanStop`](crate::store::MetaKey::CleanStop) while running.
pub const RUNNING: &str = "running";
/// The meta value of [`MetaKey::CleanStop`](crate::store::MetaKey::CleanStop) after a clean
/// stop.
pub const STOPPED: &str = "stopped";

/// The boot this process runs in: the kernel's boot id where it can be read (not under the
/// unit's `ProcSubset=pid`), and the monotonic time since boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootMark {
    pub id: Option<String>,
    pub boot_ms: i64,
}

impl BootMark {
    /// Now.
    pub fn now() -> BootMark {
        BootMark {
            id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            boot_ms: clock::boot_ms(),
        }
    }

    /// As stored in the meta table: `BOOT_ID BOOT_MS` (`-` for an unknown id).
    pub fn to_meta(&self) -> String {
        format!("{} {}", self.id.as_deref().unwrap_or("-"), self.boot_ms)
    }

    pub fn from_meta(text: &str) -> Option<BootMark> {
        let (id, ms) = text.trim().split_once(' ')?;
        Some(BootMark {
            id: (id != "-").then(|| id.to_string()),
            boot_ms: ms.parse().ok()?,
        })
    }
}

/// Why this process started, from what the previous one left in the store: its clean-stop
/// marker (`None`: a new store, or one from a version without it) and the boot it last saw.
/// Without a clean stop, the same boot is a crash and another boot a power loss (or a reboot
/// that did not stop the service). Where a boot id is unknown, a monotonic clock that is behind
/// the last one seen means the box booted since.
pub fn start_reason(clean: Option<&str>, previous: Option<&str>, now: &BootMark) -> StartReason {
    if clean != Some(RUNNING) {
        return StartReason::Normal;
    }
    let Some(previous) = previous.and_then(BootMark::from_meta) else {
        return StartReason::AfterCrash;
    };
    let same_boot = match (&previous.id, &now.id) {
        (Some(a), Some(b)) => a == b,
        _ => now.boot_ms >= previous.boot_ms,
    };
    if same_boot {
        StartReason::AfterCrash
    } else {
        StartReason::AfterPowerLoss
    }
}

/// What the store writer saw of one meter since start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeterTally {
    pub bus: Option<String>,
    pub online: bool,
    /// Cumulative, from the meter's last health report.
    pub polls: u64,
    pub successes: u64,
    pub readings: u64,
    pub last_reading_ms: Option<i64>,
    /// Sum and count of the gaps between two readings.
    pub gaps_ms: i64,
    pub gaps: u64,
}

/// The bus events' figures, shared between the store writer (which observes every event) and
/// the health task (which reads them once an interval).
#[derive(Debug, Clone, Default)]
pub struct Tally(Arc<Mutex<TallyFigures>>);

/// What a [`Tally`] holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TallyFigures {
    pub meters: BTreeMap<String, MeterTally>,
    /// Readings shed from memory while the store refused them.
    pub readings_dropped: u64,
}

impl Tally {
    /// Counts `events` (before the writer folds them).
    pub fn observe(&self, events: &[BusEvent]) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for ev in events {
            match ev {
                BusEvent::Reading(r) => {
                    let m = t.meters.entry(r.meter.clone()).or_default();
                    m.readings += 1;
                    if let Some(last) = m.last_reading_ms {
                        // A wall clock that jumped back gives no (negative) gap.
                        if r.ts_ms > last {
                            m.gaps_ms += r.ts_ms - last;
                            m.gaps += 1;
                        }
                    }
                    m.last_reading_ms = Some(r.ts_ms);
                }
                BusEvent::MeterState(s) => {
                    let m = t.meters.entry(s.meter.clone()).or_default();
                    m.bus = Some(s.bus.clone());
                    m.online = s.health.online == Some(true);
                    m.polls = s.health.polls;
                    m.successes = s.health.successes;
                }
                BusEvent::Learned { .. } | BusEvent::MeterFreeze { .. } => {}
            }
        }
    }

    /// The readings shed so far (the writer's count).
    pub fn set_readings_dropped(&self, n: u64) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .readings_dropped = n;
    }

    pub fn figures(&self) -> TallyFigures {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The process's CPU time so far, clock ticks (`utime + stime` of `/proc/self/stat`).
fn cpu_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_cpu_ticks(&text)
}

/// `utime + stime` of a `/proc/PID/stat` line (fields 14 and 15; the command name in
/// parentheses may hold spaces, so fields are counted after its closing parenthesis).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory, bytes (`/proc/self/statm`, second field, in pages).
fn rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page > 0).then(|| pages * page as u64)
}

fn ticks_per_s() -> u64 {
    // SAFETY: sysconf only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Gathers the health figures, interval after interval (it remembers the last interval's
/// counters to give rates over the interval).
#[derive(Debug)]
pub struct HealthGatherer {
    start_reason: StartReason,
    started: std::time::Instant,
    data_dir: PathBuf,
    require_synced: bool,
    /// Bus name → its configured meters.
    buses: Vec<(String, Vec<String>)>,
    last: Option<Sample>,
    disk_free_min: Option<u64>,
}

/// The counters at the end of an interval.
#[derive(Debug, Clone)]
struct Sample {
    at: std::time::Instant,
    cpu_ticks: Option<u64>,
    meters: BTreeMap<String, MeterTally>,
}

/// What the gatherer is handed each interval by those who know.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub uplink: UplinkState,
    pub store_bytes: Option<u64>,
    pub alarms_active: usize,
    pub commands_rejected: BTreeMap<String, u64>,
}

impl HealthGatherer {
    pub fn new(
        start_reason: StartReason,
        data_dir: &Path,
        require_synced: bool,
        buses: Vec<(String, Vec<String>)>,
    ) -> HealthGatherer {
        let mut g = HealthGatherer {
            start_reason,
            started: std::time::Instant::now(),
            data_dir: data_dir.to_path_buf(),
            require_synced,
            buses,
            last: None,
            disk_free_min: None,
        };
        g.last = Some(g.sample(&TallyFigures::default()));
        g.watch_disk();
        g
    }

    fn sample(&self, tally: &TallyFigures) -> Sample {
        Sample {
            at: std::time::Instant::now(),
            cpu_ticks: cpu_ticks(),
            meters: tally.meters.clone(),
        }
    }

    /// Reads the data directory's free space and lowers the watermark; returns (free, total).
    pub fn watch_disk(&mut self) -> Option<(u64, u64)> {
        let (total, free) = crate::store::filesystem_space(&self.data_dir)?;
        self.disk_free_min = Some(self.disk_free_min.map_or(free, |m| m.min(free)));
        Some((free, total))
    }

    /// The report now, with rates over the time since the last one.
    pub fn gather(&mut self, tally: &TallyFigures, inputs: Inputs, now_ms: i64) -> HealthReport {
        let now = self.sample(tally);
        let last = self.last.replace(now.clone());
        let elapsed_s = last
            .as_ref()
            .map_or(0.0, |l| now.at.duration_since(l.at).as_secs_f64());
        let cpu_pct = match (last.as_ref().and_then(|l| l.cpu_ticks), now.cpu_ticks) {
            (Some(a), Some(b)) if elapsed_s > 0.0 => {
                Some(b.saturating_sub(a) as f64 / ticks_per_s() as f64 / elapsed_s * 100.0)
            }
            _ => None,
        };
        let empty = BTreeMap::new();
        let before = last.as_ref().map_or(&empty, |l| &l.meters);
        let buses = self
            .buses
            .iter()
            .map(|(name, meters)| bus_health(name, meters, before, &tally.meters))
            .collect();
        let disk = self.watch_disk();
        let sync = clock::sync_state();
        HealthReport {
            ts_ms: now_ms,
            uptime_s: self.started.elapsed().as_secs(),
            start_reason: self.start_reason,
            interval_s: elapsed_s.round() as u64,
            cpu_pct,
            rss_bytes: rss_bytes(),
            disk_free_bytes: disk.map(|d| d.0),
            disk_free_min_bytes: self.disk_free_min,
            disk_total_bytes: disk.map(|d| d.1),
            store_bytes: inputs.store_bytes,
            backlog: inputs.uplink.backlog,
            backlog_oldest_age_s: inputs
                .uplink
                .oldest_backlog_ms
                .map(|t| (now_ms - t).max(0) as u64 / 1000),
            buses,
            clock: ClockHealth {
                synchronized: sync.synchronized,
                source: sync.source.as_str(),
                sane: clock::clock_is_sane(now_ms, &sync, self.require_synced),
            },
            commands_rejected: inputs.commands_rejected,
            readings_dropped: tally.readings_dropped,
            alarms_active: inputs.alarms_active,
        }
    }
}

/// One bus over an interval: polls and successes are differences of the meters' cumulative
/// counters, the cycle the mean gap between two readings of a meter in the interval.
fn bus_health(
    name: &str,
    meters: &[String],
    before: &BTreeMap<String, MeterTally>,
    now: &BTreeMap<String, MeterTally>,
) -> BusHealth {
    let (mut polls, mut ok, mut gaps_ms, mut gaps, mut online) = (0u64, 0u64, 0i64, 0u64, 0);
    for m in meters {
        let Some(n) = now.get(m) else { continue };
        let b = before.get(m).cloned().unwrap_or_default();
        // Counters restart with a bus task (a reload): then the whole count is this interval's.
        let (bp, bs) = if n.polls >= b.polls {
            (b.polls, b.successes)
        } else {
            (0, 0)
        };
        polls += n.polls - bp;
        ok += n.successes.saturating_sub(bs);
        gaps_ms += n.gaps_ms - b.gaps_ms.min(n.gaps_ms);
        gaps += n.gaps.saturating_sub(b.gaps);
        online += usize::from(n.online);
    }
    BusHealth {
        name: name.to_string(),
        cycle_s: (gaps > 0).then(|| gaps_ms as f64 / gaps as f64 / 1000.0),
        success_pct: (polls > 0).then(|| ok as f64 * 100.0 / polls as f64),
        polls,
        meters_online: online,
        meters_total: meters.len(),
    }
}

/// How far the wall clock may move against the monotonic clock between two checks before it
/// counts as a jump.
pub const JUMP_TOLERANCE_MS: i64 = 5_000;

/// Watches the wall clock: whether it is sane (at least the build date; synchronised when
/// `require_synced`), and whether it jumped since the last check (logged with its size).
#[derive(Debug, Clone)]
pub struct ClockWatch {
    require_synced: bool,
    sane: Option<bool>,
    jumps: JumpWatch,
}

impl ClockWatch {
    pub fn new(require_synced: bool) -> ClockWatch {
        ClockWatch {
            require_synced,
            sane: None,
            jumps: JumpWatch::new(JUMP_TOLERANCE_MS),
        }
    }

    /// Checks the clock at `now_ms` (wall) and `mono_ms` (monotonic) with the synchronisation
    /// state `sync`. Returns `Some((sane, details))` when sanity changed (and at the first check
    /// when the clock is not sane): raise or clear `clock_unsynchronized`.
    pub fn check(
        &mut self,
        now_ms: i64,
        mono_ms: i64,
        sync: &ClockSync,
    ) -> Option<(bool, serde_json::Value)> {
        if let Some(jump) = self.jumps.tick(now_ms, mono_ms) {
            warn!(
                jump_ms = jump,
                "the wall clock jumped {} by {:.3} s against the monotonic clock (now {})",
                if jump > 0 { "forwards" } else { "backwards" },
                jump.abs() as f64 / 1000.0,
                clock::rfc3339_ms(now_ms)
            );
        }
        let sane = clock::clock_is_sane(now_ms, sync, self.require_synced);
        let before = self.sane.replace(sane);
        if before == Some(sane) || (before.is_none() && sane) {
            return None;
        }
        let details = serde_json::json!({
            "clock": clock::rfc3339_ms(now_ms),
            "build_date": clock::rfc3339_ms(clock::BUILD_DATE_MS),
            "synchronized": sync.synchronized,
            "source": sync.source.as_str(),
            "require_synced_clock": self.require_synced,
        });
        if sane {
            info!(
                "the clock is sane again ({}): readings are no longer marked unsynchronized",
                clock::rfc3339_ms(now_ms)
            );
        } else {
            warn!(
                "the clock is not sane ({}, build date {}, synchronized: {}{}): polling goes \
                 on, readings are marked \"clock\": \"unsynchronized\"",
                clock::rfc3339_ms(now_ms),
                clock::rfc3339_ms(clock::BUILD_DATE_MS),
                sync.synchronized,
                if self.require_synced {
                    ", require_synced_clock = true"
                } else {
                    ""
                }
            );
        }
        Some((sane, details))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SyncSource;
    use crate::model::{HealthChange, MeterHealth, MeterStatus, Reading};

    fn boot(id: Option<&str>, ms: i64) -> String {
        BootMark {
            id: id.map(str::to_string),
            boot_ms: ms,
        }
        .to_meta()
    }

    #[test]
    fn start_reasons() {
        let now = BootMark {
            id: Some("b2".into()),
            boot_ms: 30_000,
        };
        let prev_same = boot(Some("b2"), 10_000);
        let prev_other = boot(Some("b1"), 900_000);
        assert_eq!(start_reason(None, None, &now), StartReason::Normal);
        assert_eq!(
            start_reason(Some(STOPPED), Some(&prev_other), &now),
            StartReason::Normal
        );
        assert_eq!(
            start_reason(Some(RUNNING), Some(&prev_same), &now),
            StartReason::AfterCrash
        );
        assert_eq!(
            start_reason(Some(RUNNING), Some(&prev_other), &now),
            StartReason::AfterPowerLoss
        );
        // Without boot ids (ProcSubset=pid): the monotonic clock tells.
        let now = BootMark {
            id: None,
            boot_ms: 30_000,
        };
        assert_eq!(
            start_reason(Some(RUNNING), Some(&boot(None, 900_000)), &now),
            StartReason::AfterPowerLoss
        );
        assert_eq!(
            start_reason(Some(RUNNING), Some(&boot(None, 20_000)), &now),
            StartReason::AfterCrash
        );
        assert_eq!(BootMark::from_meta(&boot(None, 5)).unwrap().boot_ms, 5);
        assert!(BootMark::now().boot_ms > 0);
    }

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "1234 (amr gateway) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert!(cpu_ticks().is_some(), "our own /proc/self/stat");
        assert!(rss_bytes().is_some_and(|b| b > 0));
    }

    fn status(meter: &str, online: bool, polls: u64, successes: u64) -> BusEvent {
        BusEvent::MeterState(MeterStatus {
            meter: meter.into(),
            bus: "b".into(),
            unit: Some(1),
            address: None,
            items: None,
            health: MeterHealth {
                online: Some(online),
                consecutive_failures: 0,
                polls,
                successes,
                timeouts: 0,
                crc_errors: 0,
                wrong_unit: 0,
                exceptions: 0,
                latency_ms: None,
                last_ok_ms: None,
                last_error: None,
                probe_interval: std::time::Duration::from_secs(1),
            },
            change: HealthChange::None,
            ts_ms: 0,
        })
    }

    fn reading(meter: &str, ts_ms: i64) -> BusEvent {
        BusEvent::Reading(Reading {
            meter: meter.into(),
            ts_ms,
            values: BTreeMap::new(),
        })
    }

    #[test]
    fn a_bus_over_an_interval() {
        let tally = Tally::default();
        let dir = tempfile::tempdir().unwrap();
        let mut g = HealthGatherer::new(
            StartReason::Normal,
            dir.path(),
            false,
            vec![("b".into(), vec!["m1".into(), "m2".into()])],
        );
        tally.observe(&[
            reading("m1", 1_000),
            reading("m1", 11_000),
            reading("m1", 21_000),
            // A backwards jump gives no gap.
            reading("m1", 5_000),
            status("m1", true, 10, 9),
            status("m2", false, 10, 0),
        ]);
        let h = g.gather(&tally.figures(), Inputs::default(), clock::now_ms());
        let b = &h.buses[0];
        assert_eq!((b.meters_online, b.meters_total, b.polls), (1, 2, 20));
        assert_eq!(b.success_pct, Some(45.0));
        assert_eq!(b.cycle_s, Some(10.0));
        assert!(h.disk_free_bytes.is_some() && h.disk_free_min_bytes.is_some());
        // The next interval counts only what is new.
        tally.observe(&[status("m1", true, 14, 13), reading("m1", 35_000)]);
        let h = g.gather(&tally.figures(), Inputs::default(), clock::now_ms());
        let b = &h.buses[0];
        assert_eq!(
            (b.polls, b.success_pct, b.cycle_s),
            (4, Some(100.0), Some(30.0))
        );
    }

    #[test]
    fn the_clock_before_the_build_date_raises_and_clears() {
        let synced = ClockSync {
            synchronized: true,
            source: SyncSource::Kernel,
            est_error_us: None,
        };
        let mut w = ClockWatch::new(false);
        // A box without a real-time clock boots in 1970.
        let (sane, details) = w.check(5_000, 5_000, &synced).unwrap();
        assert!(!sane);
        assert_eq!(details["clock"], "1970-01-01T00:00:05.000Z");
        assert_eq!(w.check(6_000, 6_000, &synced), None, "reported once");
        // NTP sets it: a forward jump, and the clock is sane.
        let now = clock::BUILD_DATE_MS + 86_400_000;
        let (sane, _) = w.check(now, 7_000, &synced).unwrap();
        assert!(sane);
        assert_eq!(w.check(now + 1_000, 8_000, &synced), None);
        // A sane clock at the start says nothing.
        assert_eq!(ClockWatch::new(false).check(now, 1, &synced), None);
        // Required synchronisation.
        let unsynced = ClockSync {
            synchronized: false,
            ..synced
        };
        let mut w = ClockWatch::new(true);
        assert!(!w.check(now, 1, &unsynced).unwrap().0);
        assert!(w.check(now + 1_000, 1_001, &synced).unwrap().0);
    }
}
