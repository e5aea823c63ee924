//! The truth file: one JSON line per interval (aligned to wall-clock multiples of
//! `truth_interval_s`, like the gateway's loss intervals) with the true energies of the area,
//! so tests and benchmarks can compare the gateway's figures with what really flowed.

use super::area::{Energies, add, by_id};
use crate::clock::rfc3339_ms;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The true energies of the area over one span, kWh, primary side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruthRecord {
    /// The `[area] id`.
    pub area: String,
    /// RFC 3339, UTC, milliseconds.
    pub start: String,
    pub end: String,
    pub start_ms: i64,
    pub end_ms: i64,
    /// The span is shorter than an interval: the simulator started inside it.
    pub partial: bool,
    /// Net energy through the supply meter (import − export).
    pub supply_kwh: f64,
    /// What honest customer meters measured (import − export, theft already missing).
    pub sales_kwh: f64,
    /// What the customers really consumed (before theft and PV).
    pub true_load_kwh: f64,
    /// `supply_kwh − sales_kwh` = technical loss + theft.
    pub loss_kwh: f64,
    pub technical_loss_kwh: f64,
    pub theft_kwh: f64,
    /// PV generation of the customers.
    pub pv_kwh: f64,
    /// `loss_kwh / supply_kwh × 100`; `None` when no energy was supplied.
    pub loss_pct: Option<f64>,
    /// True metered energy (import − export) per meter id, the supply meter included.
    pub meters: BTreeMap<String, f64>,
    /// What each meter's registers counted (import − export, × multiplier): differs from
    /// `meters` for a stopped, reversed, mis-scaled or phase-less meter. A replacement's jump
    /// is not counted.
    pub registered: BTreeMap<String, f64>,
}

impl TruthRecord {
    pub(crate) fn new(
        area: &str,
        start_ms: i64,
        end_ms: i64,
        partial: bool,
        ids: &[String],
        e: &Energies,
    ) -> TruthRecord {
        let loss_kwh = e.supply_kwh - e.sales_kwh;
        TruthRecord {
            area: area.to_string(),
            start: rfc3339_ms(start_ms),
            end: rfc3339_ms(end_ms),
            start_ms,
            end_ms,
            partial,
            supply_kwh: e.supply_kwh,
            sales_kwh: e.sales_kwh,
            true_load_kwh: e.true_load_kwh,
            loss_kwh,
            technical_loss_kwh: e.technical_loss_kwh,
            theft_kwh: e.theft_kwh,
            pv_kwh: e.pv_kwh,
            loss_pct: (e.supply_kwh.abs() > 1e-12).then(|| loss_kwh / e.supply_kwh * 100.0),
            meters: by_id(ids, &e.metered_kwh),
            registered: by_id(ids, &e.registered_kwh),
        }
    }
}

/// Reads a truth file written by the simulator.
pub fn read_truth(path: &Path) -> std::io::Result<Vec<TruthRecord>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })
        })
        .collect()
}

/// The open truth file and the interval being summed.
pub(crate) struct TruthLog {
    path: PathBuf,
    file: File,
    pub interval_ms: i64,
    start_ms: i64,
    sums: Energies,
    meters: usize,
    failed: bool,
}

impl TruthLog {
    /// Opens (appends to) `path`; the first interval starts at `start_ms`.
    pub fn open(
        path: &Path,
        interval_ms: i64,
        start_ms: i64,
        meters: usize,
    ) -> std::io::Result<TruthLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(TruthLog {
            path: path.to_path_buf(),
            file,
            interval_ms,
            start_ms,
            sums: Energies::new(meters),
            meters,
            failed: false,
        })
    }

    /// Adds a segment ending at `end_ms`; writes the interval's record when `end_ms` closes
    /// it (segments never straddle a boundary).
    pub fn add(&mut self, span: &Energies, end_ms: i64, area: &str, ids: &[String]) {
        add(&mut self.sums, span);
        if end_ms.rem_euclid(self.interval_ms) != 0 {
            return;
        }
        let partial = end_ms - self.start_ms < self.interval_ms;
        let record = TruthRecord::new(area, self.start_ms, end_ms, partial, ids, &self.sums);
        self.sums = Energies::new(self.meters);
        self.start_ms = end_ms;
        let mut line = serde_json::to_string(&record).unwrap_or_default();
        line.push('\n');
        if let Err(e) = self.file.write_all(line.as_bytes())
            && !self.failed
        {
            self.failed = true;
            eprintln!("truth file {}: {e}", self.path.display());
        }
    }
}
