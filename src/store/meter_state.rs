//! What the store remembers of each meter: its last reported state, typed, so a restart can
//! republish the retained meter state and `status` can show it without reading a payload.

use crate::model::MeterStatus;
use serde::{Deserialize, Serialize};

/// A meter's last state as its bus reported it, with the model it is configured as.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeterState {
    pub meter: String,
    pub bus: String,
    /// Modbus unit id, when the meter has one.
    pub unit: Option<u8>,
    /// The configured model name (`None` for a meter no longer configured).
    pub model: Option<String>,
    /// When the bus reported it, ms since the epoch.
    pub ts_ms: i64,
    /// `None` until the first poll ended.
    pub online: Option<bool>,
    pub last_ok_ms: Option<i64>,
    pub polls: u64,
    pub successes: u64,
    pub timeouts: u64,
    pub crc_errors: u64,
    pub wrong_unit: u64,
    pub exceptions: u64,
    pub consecutive_failures: u32,
    /// Mean reply latency of successful polls, ms.
    pub latency_ms: Option<f64>,
    pub last_error: Option<String>,
    /// DL/T 645 address (12 digits), when the meter has one.
    #[serde(default)]
    pub address: Option<String>,
    /// What the meter last said about itself (DL/T 645: clock, status word, counters).
    #[serde(default)]
    pub items: Option<ItemsState>,
}

/// A meter's own items as the store keeps them (see [`crate::model::MeterItems`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemsState {
    /// When they were read, ms since the epoch.
    pub ts_ms: i64,
    /// Meter clock minus gateway clock, s.
    pub clock_skew_s: Option<f64>,
    pub power_down_count: Option<u64>,
    pub cover_open_count: Option<u64>,
    pub status_word_1: Option<u16>,
}

impl MeterState {
    /// The state of `status`, for a meter of model `model`.
    pub fn of(status: &MeterStatus, model: Option<&str>) -> MeterState {
        let h = &status.health;
        MeterState {
            meter: status.meter.clone(),
            bus: status.bus.clone(),
            unit: status.unit,
            model: model.map(str::to_string),
            ts_ms: status.ts_ms,
            online: h.online,
            last_ok_ms: h.last_ok_ms,
            polls: h.polls,
            successes: h.successes,
            timeouts: h.timeouts,
            crc_errors: h.crc_errors,
            wrong_unit: h.wrong_unit,
            exceptions: h.exceptions,
            consecutive_failures: h.consecutive_failures,
            latency_ms: h.latency_ms,
            last_error: h.last_error.clone(),
            address: status.address.clone(),
            items: status.items.as_ref().map(|i| ItemsState {
                ts_ms: i.ts_ms,
                clock_skew_s: i.clock_skew_s,
                power_down_count: i.power_down_count,
                cover_open_count: i.cover_open_count,
                status_word_1: i.status_word_1,
            }),
        }
    }

    /// Share of polls that were answered, in percent with one decimal, as published and shown
    /// (0 before the first poll).
    pub fn success_rate_pct(&self) -> f64 {
        if self.polls == 0 {
            return 0.0;
        }
        let pct = self.successes as f64 * 100.0 / self.polls as f64;
        (pct * 10.0).round() / 10.0
    }

    /// Mean reply latency in whole milliseconds, as published and shown.
    pub fn latency_whole_ms(&self) -> Option<f64> {
        self.latency_ms.map(f64::round)
    }

    /// `"online"`, `"offline"` or `"unknown"` (no poll ended yet).
    pub fn state_name(&self) -> &'static str {
        match self.online {
            Some(true) => "online",
            Some(false) => "offline",
            None => "unknown",
        }
    }
}
