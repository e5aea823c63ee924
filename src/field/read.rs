//! `amr-gateway read`: one reading of one meter, every quantity with its unit.

use crate::bus::DeviceLock;
use crate::clock::{now_ms, rfc3339_ms};
use crate::meter::{MeterModel, decode_block, plan_blocks};
use crate::protocol::modbus::{ModbusClient, RtuTiming};
use serde_json::json;
use std::collections::BTreeMap;
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

/// Reads every block of `model` from `unit` once.
pub async fn read_meter(
    link: &super::LinkArgs,
    unit: u8,
    model: &MeterModel,
) -> Result<MeterRead, String> {
    let bus = link.bus()?;
    if let Some(dev) = &bus.device {
        // The port itself is locked while open; checking first gives the clear message.
        DeviceLock::check(dev).map_err(|e| e.to_string())?;
    }
    let mut client = ModbusClient::open(&bus)
        .await
        .map_err(|e| format!("cannot open {}: {e}", endpoint(&bus)))?;
    // The user's timeout is the meter's allowance; a block read gets its wire time on top, so
    // that a slow line (2400 baud: 750 ms for 80 registers) is not taken for a silent meter.
    let timeout = Duration::from_millis(bus.timeout_ms);
    let timing = RtuTiming::from_serial(&bus.serial);
    let started = Instant::now();
    let mut values = BTreeMap::new();
    let mut errors = Vec::new();
    let blocks = plan_blocks(model, model.max_block);
    for block in &blocks {
        match client
            .read_registers(
                unit,
                block.function,
                block.address,
                block.count,
                timeout + timing.read_wire_time(block.count),
            )
            .await
        {
            Ok(words) => values.extend(decode_block(model, block, &words)),
            Err(e) => errors.push(format!(
                "registers {}..{} (function {:02}): {e}",
                block.address,
                block.address as u32 + block.count as u32 - 1,
                block.function
            )),
        }
        if model.inter_frame_pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(model.inter_frame_pause_ms)).await;
        }
    }
    Ok(MeterRead {
        unit,
        model: model.name.clone(),
        ts_ms: now_ms(),
        values,
        errors,
        requests: blocks.len(),
        elapsed: started.elapsed(),
    })
}

fn endpoint(bus: &crate::config::BusConfig) -> String {
    bus.device
        .as_ref()
        .map(|d| d.display().to_string())
        .or_else(|| bus.address.clone())
        .unwrap_or_default()
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
