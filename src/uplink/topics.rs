//! Topic names and JSON payloads of the MQTT contract (`../shared/design.md`).

use crate::clock::rfc3339_ms;
use crate::model::Reading;
use crate::store::Message;
use serde_json::{Value, json};

/// Builds `{prefix}/{gateway}/...` topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub prefix: String,
    pub gateway: String,
}

impl Topics {
    pub fn new(prefix: &str, gateway: &str) -> Self {
        Topics {
            prefix: prefix.to_string(),
            gateway: gateway.to_string(),
        }
    }
    fn base(&self) -> String {
        format!("{}/{}", self.prefix, self.gateway)
    }
    /// Retained `online`/`offline`; also the last will.
    pub fn status(&self) -> String {
        format!("{}/status", self.base())
    }
    pub fn reading(&self, meter: &str) -> String {
        format!("{}/reading/{meter}", self.base())
    }
    pub fn loss(&self, area: &str) -> String {
        format!("{}/loss/{area}", self.base())
    }
    pub fn alarm(&self, kind: &str, subject: &str) -> String {
        format!("{}/alarm/{kind}/{subject}", self.base())
    }
    /// Retained set of active alarms. Cannot clash with an event topic, which has two levels
    /// below `alarm`.
    pub fn alarm_active(&self) -> String {
        format!("{}/alarm/active", self.base())
    }
    /// Daily voltage quality of a meter (one message per phase and day).
    pub fn voltage(&self, meter: &str) -> String {
        format!("{}/voltage/{meter}", self.base())
    }
    pub fn meter_state(&self, meter: &str) -> String {
        format!("{}/meter/{meter}/state", self.base())
    }

    /// The QoS 1 reading message of the contract (the store adds `seq`).
    pub fn reading_message(&self, r: &Reading) -> Message {
        let values: serde_json::Map<String, Value> = r
            .values
            .iter()
            .map(|(k, v)| (k.clone(), json_number(*v)))
            .collect();
        Message {
            topic: self.reading(&r.meter),
            payload: json!({"meter": r.meter, "ts": rfc3339_ms(r.ts_ms), "values": values}),
            qos: 1,
            retain: false,
            sequenced: true,
        }
    }

    /// The retained status payload.
    pub fn status_payload(online: bool, ts_ms: i64) -> Vec<u8> {
        json!({
            "state": if online { "online" } else { "offline" },
            "ts": rfc3339_ms(ts_ms),
            "version": env!("CARGO_PKG_VERSION"),
        })
        .to_string()
        .into_bytes()
    }
}

/// A finite f64 as a JSON number, rounded to 6 significant decimals to avoid float noise;
/// non-finite values become `null`.
pub fn json_number(v: f64) -> Value {
    if !v.is_finite() {
        return Value::Null;
    }
    let rounded = (v * 1e6).round() / 1e6;
    serde_json::Number::from_f64(rounded)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

#[cfg(test)]
#[path = "contract_tests.rs"]
mod tests;

#[cfg(test)]
mod pin {
    use super::*;
    use crate::analytics::alarms::{Alarm, AlarmChange};
    use crate::analytics::loss::{LossRecord, LossVerdict, RollingLoss};
    use crate::analytics::voltage::DayRecord;
    use crate::model::MeterStatus;
    fn t() -> Topics {
        Topics::new("amr", "gw1")
    }
    pub fn loss(r: &LossRecord) -> Message {
        crate::analytics::loss::loss_message(&t(), r)
    }
    pub fn alarm(c: &AlarmChange) -> Message {
        crate::analytics::alarms::alarm_message(&t(), c)
    }
    pub fn active(a: &[Alarm], now: i64) -> Message {
        crate::analytics::alarms::active_alarms_message(&t(), a, now)
    }
    pub fn day(d: &DayRecord) -> Message {
        crate::analytics::voltage::day_message(&t(), d)
    }
    pub fn rolling(r: &RollingLoss) -> Value {
        json!({
            "area": r.area,
            "start": rfc3339_ms(r.start_ms),
            "end": rfc3339_ms(r.end_ms),
            "supply_kwh": json_number(r.supply_kwh),
            "sales_kwh": json_number(r.sales_kwh),
            "loss_kwh": json_number(r.loss_kwh),
            "loss_pct": r.loss_pct.map_or(Value::Null, json_number),
            "coverage_pct": json_number(r.coverage_pct),
        })
    }
    pub fn verdict(v: &LossVerdict) -> Value {
        json!({
            "area": v.area,
            "start": rfc3339_ms(v.start_ms),
            "end": rfc3339_ms(v.end_ms),
            "supply_kwh": json_number(v.supply_kwh),
            "sales_kwh": json_number(v.sales_kwh),
            "loss_kwh": json_number(v.loss_kwh),
            "loss_pct": json_number(v.value),
        })
    }
    pub fn meter(s: &MeterStatus, model: Option<&str>) -> Message {
        let cfg = format!(
            r#"
[gateway]
id = "gw1"
data_dir = "d"
[mqtt]
host = "h"
[[bus]]
name = "rs485"
protocol = "modbus-rtu"
device = "/dev/null"
[[meter]]
id = "m1"
bus = "rs485"
unit = 7
model = "{}"
"#,
            model.unwrap_or("chint-dtsu666")
        );
        let mut config = crate::config::load_str(&cfg, std::path::Path::new("a.toml")).unwrap();
        if model.is_none() {
            config.meters.clear();
        }
        crate::gateway::meter_state_message(&t(), &config, s)
    }
}
