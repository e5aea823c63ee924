//! `amr-gateway read`: one reading of one meter, every quantity with its unit — one poll of
//! the meter through the bus's driver, as the daemon polls it (energy first, a block the meter
//! refuses narrowed or split — for DL/T 645 read item by item — each request's deadline the
//! timeout plus its wire time).

use crate::bus::{
    DeviceLock, Dlt645Driver, Driver, Endpoint, MeterSettings, ModbusDriver, OfflinePolicy, Poll,
};
use crate::clock::{now_ms, rfc3339_ms};
use crate::meter::{Dlt645Model, MeterModel};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one `read` found.
#[derive(Debug, Clone)]
pub struct MeterRead {
    /// The meter, as the tool names it: Modbus `unit 3`, or a DL/T 645 address.
    pub meter: MeterRef,
    pub model: String,
    pub ts_ms: i64,
    pub values: BTreeMap<String, f64>,
    /// One line per block that failed: registers, function and the error.
    pub errors: Vec<String>,
    pub requests: usize,
    pub elapsed: Duration,
    /// What to check when nothing valid came back, when the link calls for other advice than
    /// the serial line's (a Modbus TCP port that may speak RTU over TCP).
    pub advice: Option<String>,
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
    let driver = ModbusDriver::new(&bus, &[meter], &[], &OfflinePolicy::default())?;
    let mut read = poll_once(
        Box::new(driver),
        &bus.endpoint,
        MeterRef::Unit(unit),
        &model.name,
    )
    .await?;
    // A Modbus TCP request to a serial server in RTU-over-TCP mode gets silence (the meters
    // see garbage) or an RTU frame, which is no MBAP frame.
    let invalid = |e: &String| e.contains("no reply") || e.contains("malformed reply");
    if link.is_modbus_tcp() && read.values.is_empty() && read.errors.iter().any(invalid) {
        read.advice = Some(format!(
            "{}: {}",
            read.meter,
            link.advice(read.errors.iter().find(|e| invalid(e)).expect("checked"))
        ));
    }
    Ok(read)
}

/// Reads every quantity of the DL/T 645 `model` from the meter at `address` once.
pub async fn read_dlt645_meter(
    link: &super::LinkArgs,
    address: &str,
    model: &Dlt645Model,
) -> Result<MeterRead, String> {
    let bus = link.bus()?;
    if let Endpoint::Serial(dev) = &bus.endpoint {
        DeviceLock::check(dev).map_err(|e| e.to_string())?;
    }
    let meter = MeterSettings::dlt645("cli", address, Arc::new(model.clone()));
    let driver = Dlt645Driver::new(&bus, &[meter], &[], &OfflinePolicy::default())?;
    let meter = MeterRef::Address(address.to_string());
    poll_once(Box::new(driver), &bus.endpoint, meter, &model.name).await
}

/// Opens `driver`'s link and polls its one meter once.
async fn poll_once(
    mut driver: Box<dyn Driver>,
    endpoint: &Endpoint,
    meter: MeterRef,
    model: &str,
) -> Result<MeterRead, String> {
    driver
        .open()
        .await
        .map_err(|e| format!("cannot open {endpoint}: {e}"))?;
    let started = Instant::now();
    // Not presumed alive: a unit that does not answer costs one timeout, not two.
    let poll: Poll = driver.poll(0, false).await;
    Ok(MeterRead {
        meter,
        model: model.to_string(),
        ts_ms: poll.reading.as_ref().map_or_else(now_ms, |r| r.ts_ms),
        values: poll.reading.map(|r| r.values).unwrap_or_default(),
        errors: poll
            .failures
            .iter()
            .map(|f| format!("{}: {}", f.what, f.error))
            .collect(),
        requests: poll.requests,
        elapsed: started.elapsed(),
        advice: None,
    })
}

/// How a tool names the meter it reads.
#[derive(Debug, Clone, PartialEq)]
pub enum MeterRef {
    /// A Modbus unit id.
    Unit(u8),
    /// A DL/T 645 address (12 digits).
    Address(String),
}

impl std::fmt::Display for MeterRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MeterRef::Unit(u) => write!(f, "unit {u}"),
            MeterRef::Address(a) => write!(f, "address {a}"),
        }
    }
}

impl MeterRead {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} · model {} · {} · {} request(s) in {} ms\n",
            self.meter,
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
        if let Some(advice) = &self.advice {
            out += advice;
            out.push('\n');
        } else if self.values.is_empty() && self.errors.is_empty() {
            out += "no values\n";
        } else if self.values.is_empty() && self.errors.iter().all(|e| e.contains("no reply")) {
            let which = match self.meter {
                MeterRef::Unit(_) => "unit id",
                MeterRef::Address(_) => "address (on the nameplate; scan finds a lone meter's)",
            };
            out += &format!(
                "{} does not answer: check the {which}, the baud rate and parity, and the wiring \
                 (A/B swapped? termination?)\n",
                self.meter
            );
        } else if self.values.is_empty() {
            out += &format!(
                "{} answers, but not as a {}: is it another model? (scan guesses it)\n",
                self.meter, self.model
            );
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let mut out = json!({
            "model": self.model,
            "ts": rfc3339_ms(self.ts_ms),
            "requests": self.requests,
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "values": self.values.iter().map(|(k, v)| (k.clone(), crate::uplink::topics::json_number(*v))).collect::<serde_json::Map<_, _>>(),
            "errors": self.errors,
        });
        out[match self.meter {
            MeterRef::Unit(_) => "unit",
            MeterRef::Address(_) => "address",
        }] = match &self.meter {
            MeterRef::Unit(u) => json!(u),
            MeterRef::Address(a) => json!(a),
        };
        out
    }
}
