//! `amr-gateway scan`: which unit ids answer on a bus, and which model each looks like.
//!
//! One short request per unit id (holding register 0): any answer — data or a Modbus exception —
//! means a device is there. For each unit found, every model of the library is tried on the block
//! holding its voltage and frequency; models whose values are plausible are the guess.
//!
//! Every request goes through the bus's driver ([`ModbusDriver::read`]): the daemon's
//! transaction, with its deadline (the timeout plus the request's wire time at `--baud`).

use crate::bus::{DeviceLock, Endpoint, ModbusDriver, OfflinePolicy};
use crate::meter::{MeterModel, ModelLibrary, ReadBlock, decode_block, plan_blocks};
use crate::protocol::modbus::ModbusError;
use serde_json::json;

/// The presence probe: holding register 0.
const PRESENCE: ReadBlock = ReadBlock {
    function: 3,
    address: 0,
    count: 1,
    registers: Vec::new(),
};

/// One unit id that answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub unit: u8,
    /// How it answered the presence probe (`data` or the exception).
    pub answer: String,
    /// Models whose register map gives plausible values, best first.
    pub models: Vec<String>,
    /// How many of `models` share the best score (they fit equally well: same register map).
    pub likely: usize,
}

/// Parses `1-247`, `5`, `1,2,10-20`.
pub fn parse_units(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let a: u8 = a
            .parse()
            .map_err(|_| format!("unit range `{part}`: use e.g. 1-247"))?;
        let b: u8 = b
            .parse()
            .map_err(|_| format!("unit range `{part}`: use e.g. 1-247"))?;
        if a == 0 || b > 247 || a > b {
            return Err(format!("unit range `{part}`: unit ids are 1..247"));
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Scans `units`, calling `progress(done, found_so_far)` after each unit.
pub async fn scan(
    link: &super::LinkArgs,
    units: &[u8],
    library: &ModelLibrary,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Found>, String> {
    let bus = link.bus()?;
    if let Endpoint::Serial(dev) = &bus.endpoint {
        // The port itself is locked while open; checking first gives the clear message.
        DeviceLock::check(dev).map_err(|e| e.to_string())?;
    }
    let mut driver = ModbusDriver::new(&bus, &[], &[], &OfflinePolicy::default())?;
    driver
        .open_link()
        .await
        .map_err(|e| format!("cannot open the bus: {e}"))?;
    let mut found = Vec::new();
    for (i, &unit) in units.iter().enumerate() {
        let answer = match driver.read(unit, &PRESENCE).await {
            Ok(_) => Some("data".to_string()),
            Err(ModbusError::Exception { code }) => Some(format!("exception {code}")),
            Err(ModbusError::Timeout(_)) => None,
            // A garbled answer still means something is there.
            Err(ModbusError::BadCrc) => Some("bad CRC".to_string()),
            Err(ModbusError::WrongUnit { .. }) | Err(ModbusError::Malformed(_)) => None,
            Err(
                e @ (ModbusError::Io(_)
                | ModbusError::NotConnected { .. }
                | ModbusError::InvalidRequest(_)),
            ) => {
                return Err(format!("bus failed: {e}"));
            }
        };
        if let Some(answer) = answer {
            let (models, likely) = guess_models(&mut driver, unit, library).await;
            found.push(Found {
                unit,
                answer,
                models,
                likely,
            });
        }
        progress(i + 1, found.len());
    }
    Ok(found)
}

/// Models whose voltage/frequency registers read back plausible values from `unit`.
async fn guess_models(
    driver: &mut ModbusDriver,
    unit: u8,
    library: &ModelLibrary,
) -> (Vec<String>, usize) {
    let mut scored: Vec<(u32, String)> = Vec::new();
    for model in library.models.values() {
        if let Some(score) = plausibility(driver, unit, model).await
            && score > 0
        {
            scored.push((score, model.name.clone()));
        }
    }
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let likely = scored
        .iter()
        .take_while(|(s, _)| Some(*s) == scored.first().map(|f| f.0))
        .count();
    (scored.into_iter().map(|(_, n)| n).collect(), likely)
}

/// Reads the blocks of `model` holding voltages and frequency; scores plausible values
/// (a voltage of 85..280 V, a frequency of 45..65 Hz), `None` if the meter refuses. A zero
/// voltage (an unconnected phase) costs a point, so that a single-phase meter is not guessed
/// to be a three-phase model with two dead phases.
///
/// A block read gets its wire time on top of the user's timeout (the driver's deadline), so
/// that a short scan timeout does not rule out every model of a slow bus.
async fn plausibility(driver: &mut ModbusDriver, unit: u8, model: &MeterModel) -> Option<u32> {
    let wanted = |q: &str| q.starts_with("voltage_l") && q.len() == 12 || q == "frequency_hz";
    let mut score: u32 = 0;
    let mut zeros: u32 = 0;
    let mut any = false;
    for block in plan_blocks(model, model.max_block) {
        if !block
            .registers
            .iter()
            .any(|&i| wanted(&model.registers[i].quantity))
        {
            continue;
        }
        any = true;
        let words = driver.read(unit, &block).await.ok()?;
        for (q, v) in decode_block(model, &block, &words) {
            if !wanted(&q) {
                continue;
            }
            let ok = if q == "frequency_hz" {
                (45.0..=65.0).contains(&v)
            } else {
                (85.0..=280.0).contains(&v)
            };
            if ok {
                score += if q == "frequency_hz" { 2 } else { 1 };
            } else if q != "frequency_hz" && v == 0.0 {
                zeros += 1;
            } else {
                // An absurd value rules the model out; a zero voltage is an unconnected phase.
                return Some(0);
            }
        }
    }
    any.then_some(score.saturating_sub(zeros))
}

/// The human-readable table.
pub fn table(found: &[Found], scanned: usize) -> String {
    let mut out = format!("{} of {} unit id(s) answered\n", found.len(), scanned);
    if found.is_empty() {
        out += "nothing answered: check wiring (A/B swapped?), baud rate, parity and termination\n";
        return out;
    }
    out += &format!("{:>4}  {:<14}  model guess\n", "unit", "answer");
    for f in found {
        let guess = if f.models.is_empty() {
            "unknown (no model of the library reads plausible values)".to_string()
        } else if f.likely < f.models.len() {
            format!(
                "{} (less likely: {})",
                f.models[..f.likely].join(" or "),
                f.models[f.likely..].join(", ")
            )
        } else {
            f.models.join(" or ")
        };
        out += &format!("{:>4}  {:<14}  {}\n", f.unit, f.answer, guess);
    }
    out
}

pub fn json(found: &[Found], scanned: usize) -> serde_json::Value {
    json!({
        "scanned": scanned,
        "found": found.iter().map(|f| json!({"unit": f.unit, "answer": f.answer, "models": f.models, "likely": &f.models[..f.likely]})).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_ranges() {
        assert_eq!(parse_units("1-3,7").unwrap(), vec![1, 2, 3, 7]);
        assert_eq!(parse_units("247").unwrap(), vec![247]);
        assert!(parse_units("0-5").is_err());
        assert!(parse_units("5-2").is_err());
        assert!(parse_units("1-300").is_err());
    }
}
