//! `amr-gateway read`: one reading of one meter, every quantity with its unit — one poll of
//! the meter through the bus's driver, as the daemon polls it (energy first, a block the meter
//! refuses narrowed or split, each request's deadline the timeout plus its wire time).

use crate::bus::{DeviceLock, Driver, Endpoint, MeterSettings, ModbusDriver, OfflinePolicy};
use crate::clock::{now_ms, rfc3339_ms};
use crate::meter::MeterModel;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one `read` found.
#[derive(Debug, Clone)]
pub struct MeterRead {
    pub unit: u8,
    pub model: String,
    pub ts_ms: i64,
    pub values: BTreeMap<String, f64>,
    /// One line per block that failed: registers, function and the error.
    pub errors: Vec<String>,
    pub requests: usize,
    pub elapsed: Duration,
}

/// Reads every quantity of `model` from `unit` once.
pub async fn read_meter(
    link: &super::LinkArgs,
    unit: u8,
    model: &MeterModel,
) -> Result<MeterRead, String> {
    let bus = link.bus()?;
    if let Endpoint::Serial(dev) = &bus.endpoint {
        // The port itself is locked while open; checking first gives the clear message.
        DeviceLock::check(dev).map_err(|e| e.to_string())?;
    }
    let meter = MeterSettings::modbus("cli", unit, Arc::new(model.clone()));
    let mut driver = ModbusDriver::new(&bus, &[meter], &[], &OfflinePolicy::default())?;
    driver
        .open()
        .await
        .map_err(|e| format!("cannot open {}: {e}", bus.endpoint))?;
    let started = Instant::now();
    // Not presumed alive: a unit that does not answer costs one timeout, not two.
    let poll = driver.poll(0, false).await;
    Ok(MeterRead {
        unit,
        model: model.name.clone(),
        ts_ms: poll.reading.as_ref().map_or_else(now_ms, |r| r.ts_ms),
        values: poll.reading.map(|r| r.values).unwrap_or_default(),
        errors: poll
            .failures
            .iter()
            .map(|f| format!("{}: {}", f.what, f.error))
            .collect(),
        requests: poll.requests,
        elapsed: started.elapsed(),
    })
}

impl MeterRead {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "unit {} · model {} · {} · {} request(s) in {} ms\n",
            self.unit,
            self.model,
            rfc3339_ms(self.ts_ms),
            self.requests,
            self.elapsed.as_millis()
        );
        let width = self
            .values
            .keys()
            .map(|k| k.len())
            .max()
            .unwrap_or(8)
            .max(8);
        if !self.values.is_empty() {
            out += &format!("{:<width$}  {:>14}  unit\n", "quantity", "value");
        }
        for (q, v) in &self.values {
            out += &format!("{q:<width$}  {v:>14.3}  {}\n", super::unit_of(q));
        }
        for e in &self.errors {
            out += &format!("error: {e}\n");
        }
        if self.values.is_empty() && self.errors.is_empty() {
            out += "no values\n";
        } else if self.values.is_empty() && self.errors.iter().all(|e| e.contains("no reply")) {
            out += &format!(
                "unit {} does not answer: check the unit id (scan finds it), the baud rate and \
                 parity, and the wiring (A/B swapped? termination?)\n",
                self.unit
            );
        } else if self.values.is_empty() {
            out += &format!(
                "unit {} answers, but not as a {}: is it another model? (scan guesses it)\n",
                self.unit, self.model
            );
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "unit": self.unit,
            "model": self.model,
            "ts": rfc3339_ms(self.ts_ms),
            "requests": self.requests,
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "values": self.values.iter().map(|(k, v)| (k.clone(), crate::uplink::topics::json_number(*v))).collect::<serde_json::Map<_, _>>(),
            "errors": self.errors,
        })
    }
}
