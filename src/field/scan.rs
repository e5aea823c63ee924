//! `amr-gateway scan`: which unit ids answer on a bus, and which model each looks like.
//!
//! One short request per unit id (holding register 0): any answer — data or a Modbus exception —
//! means a device is there. For each unit found, every model of the library is tried on the block
//! holding its voltage and frequency; models whose values are plausible are the guess.
//!
//! DL/T 645 ([`scan_dlt645`]): a lone meter is asked for its address with the wildcard read
//! (13H to `AAAAAAAAAAAA`); with a list of addresses (`--addresses FILE`), each is tried. A
//! meter found is read its import energy by each DL/T 645 model's identifier: the models it
//! answers are the guess (a 2007 meter answers `00010000`, a 1997 one `9010`).
//!
//! Every request goes through the bus's driver ([`ModbusDriver::read`],
//! [`Dlt645Driver::read`]): the daemon's transaction, with its deadline (the timeout plus the
//! request's wire time at `--baud`).

use crate::bus::{DeviceLock, Dlt645Driver, Endpoint, ModbusDriver, OfflinePolicy};
use crate::meter::{MeterModel, ModelLibrary, ReadBlock, decode_block, plan_blocks};
use crate::protocol::dlt645::{Address, Dlt645Error};
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
    mut progress: impl FnMut(usize, &[Found]),
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
        progress(i + 1, &found);
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
        out += &row(f);
        out.push('\n');
    }
    out
}

/// One found unit as the table shows it: unit, answer, model guess.
pub fn row(f: &Found) -> String {
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
    format!("{:>4}  {:<14}  {}", f.unit, f.answer, guess)
}

pub fn json(found: &[Found], scanned: usize) -> serde_json::Value {
    json!({
        "scanned": scanned,
        "found": found.iter().map(|f| json!({"unit": f.unit, "answer": f.answer, "models": f.models, "likely": &f.models[..f.likely]})).collect::<Vec<_>>(),
    })
}

/// One DL/T 645 meter that answered.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundMeter {
    /// Its address, 12 digits.
    pub address: String,
    /// How it answered: `data`, or the abnormal reply in words.
    pub answer: String,
    /// The DL/T 645 models whose import energy identifier it answers.
    pub models: Vec<String>,
}

/// Reads a list of DL/T 645 addresses, one a line (blank lines and `#` comments skipped);
/// a bad line is reported as `FILE:LINE: ...`.
pub fn parse_addresses(text: &str, file: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let address = Address::parse(line)
            .map_err(|e| format!("{file}:{}: address `{line}`: {}", i + 1, e.0))?;
        out.push(address.to_string());
    }
    if out.is_empty() {
        return Err(format!(
            "{file}: no address in it; write one 12-digit address a line"
        ));
    }
    Ok(out)
}

/// Scans a DL/T 645 bus: with `addresses`, tries each; without, asks the only meter on the bus
/// for its address. Calls `progress(done, found_so_far)` after each address.
pub async fn scan_dlt645(
    link: &super::LinkArgs,
    addresses: Option<&[String]>,
    library: &ModelLibrary,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<FoundMeter>, String> {
    let bus = link.bus()?;
    if let Endpoint::Serial(dev) = &bus.endpoint {
        DeviceLock::check(dev).map_err(|e| e.to_string())?;
    }
    let mut driver = Dlt645Driver::new(&bus, &[], &[], &OfflinePolicy::default())?;
    driver
        .open_link()
        .await
        .map_err(|e| format!("cannot open the bus: {e}"))?;
    let mut found = Vec::new();
    let Some(addresses) = addresses else {
        match driver.read_address().await {
            Ok(address) => {
                let (answer, models) = guess_dlt645(&mut driver, &address, library).await?;
                found.push(FoundMeter {
                    address: address.to_string(),
                    answer: answer.unwrap_or_else(|| "address only".into()),
                    models,
                });
            }
            Err(Dlt645Error::Timeout(_)) => {}
            Err(e @ (Dlt645Error::Io(_) | Dlt645Error::LineSetting { .. })) => {
                return Err(format!("bus failed: {e}"));
            }
            Err(e) => {
                return Err(format!(
                    "the read-address request got a garbled answer ({e}): with several meters \
                     on the bus their replies collide; wire one meter at a time, or give the \
                     addresses to try with --addresses FILE"
                ));
            }
        }
        progress(1, found.len());
        return Ok(found);
    };
    for (i, text) in addresses.iter().enumerate() {
        let address = Address::parse(text).map_err(|e| format!("address {text}: {}", e.0))?;
        let (answer, models) = guess_dlt645(&mut driver, &address, library).await?;
        if let Some(answer) = answer {
            found.push(FoundMeter {
                address: address.to_string(),
                answer,
                models,
            });
        }
        progress(i + 1, found.len());
    }
    Ok(found)
}

/// How the meter at `address` answers the import energy identifier of each DL/T 645 model:
/// `data` and the models it answered, an abnormal reply in words, or `None` for silence.
async fn guess_dlt645(
    driver: &mut Dlt645Driver,
    address: &Address,
    library: &ModelLibrary,
) -> Result<(Option<String>, Vec<String>), String> {
    let mut models = Vec::new();
    let mut abnormal = None;
    for model in library.dlt645.values() {
        let Some(entry) = model.entry_named("energy_import_kwh") else {
            continue;
        };
        match driver.read(address, entry.di, entry.format.len()).await {
            Ok(_) => models.push(model.name.clone()),
            Err(e @ Dlt645Error::Abnormal { .. }) => {
                abnormal.get_or_insert(format!(
                    "abnormal reply ({e}); an answer, though some stacks answer any address so"
                ));
            }
            Err(e @ (Dlt645Error::Io(_) | Dlt645Error::LineSetting { .. })) => {
                return Err(format!("bus failed: {e}"));
            }
            Err(_) => {}
        }
    }
    // Newest edition first.
    models.reverse();
    let answer = if models.is_empty() {
        abnormal
    } else {
        Some("data".to_string())
    };
    Ok((answer, models))
}

/// The human-readable table of a DL/T 645 scan of `scanned` addresses (`None`: the wildcard).
pub fn table_dlt645(found: &[FoundMeter], scanned: Option<usize>) -> String {
    let mut out = match scanned {
        Some(n) => format!("{} of {n} address(es) answered\n", found.len()),
        None => format!(
            "{} meter(s) answered the read-address request (13H to AAAAAAAAAAAA)\n",
            found.len()
        ),
    };
    if found.is_empty() {
        out += "nothing answered: check wiring (A/B swapped?), baud rate (DL/T 645 meters run \
                1200..9600, often 2400), parity (even) and termination";
        out += if scanned.is_none() {
            "; some meters do not answer the wildcard: try their nameplate addresses with \
             --addresses FILE\n"
        } else {
            "\n"
        };
        return out;
    }
    out += &format!("{:<12}  {:<10}  model guess\n", "address", "answer");
    for f in found {
        let guess = if f.models.is_empty() {
            "unknown (it answers no DL/T 645 model's energy identifier)".to_string()
        } else {
            f.models.join(" or ")
        };
        out += &format!("{:<12}  {:<10}  {guess}\n", f.address, f.answer);
    }
    out
}

/// The JSON of a DL/T 645 scan: the Modbus scan's shape, `address` where it has `unit`.
pub fn json_dlt645(found: &[FoundMeter], scanned: Option<usize>) -> serde_json::Value {
    json!({
        "scanned": scanned.unwrap_or(1),
        "found": found.iter().map(|f| json!({
            "address": f.address,
            "answer": f.answer,
            "models": f.models,
            "likely": f.models.first().map(|m| vec![m.clone()]).unwrap_or_default(),
        })).collect::<Vec<_>>(),
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

    #[test]
    fn address_lists() {
        let text = "# households\n000000000001\n\n202208310002  # flat 2\n";
        assert_eq!(
            parse_addresses(text, "a.txt").unwrap(),
            ["000000000001", "202208310002"]
        );
        let err = parse_addresses("000000000001\n12345\n", "a.txt").unwrap_err();
        assert!(err.starts_with("a.txt:2: address `12345`"), "{err}");
        assert!(parse_addresses("# none\n", "a.txt").is_err());
    }
}
