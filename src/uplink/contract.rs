//! The MQTT contract, whole: every topic and every payload the gateway publishes is rendered
//! here, from the typed records of the engines and the store (`../shared/design.md` and the
//! README list them). Nothing else in the crate writes a topic or a payload field.
//!
//! Payloads are JSON objects; numbers go through [`json_number`] (6 decimals, non-finite as
//! `null`); times are RFC 3339 UTC with milliseconds. Sequenced messages get their `"seq"`
//! from the store. The tests pin every payload byte for byte.

use crate::analytics::alarms::{Alarm, AlarmChange, Transition};
use crate::analytics::collection::{CollectionReport, GroupKind, GroupSuccess};
use crate::analytics::curve::CurveBlock;
use crate::analytics::freeze::{DailyLoss, FreezeRecord};
use crate::analytics::loss::{LossRecord, LossVerdict, RollingLoss};
use crate::analytics::voltage::{AreaMonth, DayRecord, MonthRecord};
use crate::clock::rfc3339_ms;
pub use crate::model::json_number;
use crate::model::{Ratios, Reading};
use crate::store::{Message, MeterState};
use serde_json::{Map, Value, json};

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
    /// The monthly voltage quality of a meter (one message per phase and month).
    pub fn voltage_month(&self, meter: &str) -> String {
        format!("{}/voltage/{meter}/month", self.base())
    }
    /// The monthly voltage quality of an area.
    pub fn area_voltage_month(&self, area: &str) -> String {
        format!("{}/voltage/area/{area}/month", self.base())
    }
    /// A meter's daily and monthly freezes.
    pub fn freeze(&self, meter: &str) -> String {
        format!("{}/freeze/{meter}", self.base())
    }
    /// A meter's load curve, a block at a time.
    pub fn curve(&self, meter: &str) -> String {
        format!("{}/curve/{meter}", self.base())
    }
    /// The day's collection success.
    pub fn collection(&self) -> String {
        format!("{}/collection", self.base())
    }
    /// An area's daily loss from the freezes. One level below `loss/{area}`, so a
    /// subscription to `loss/+` (the intervals) does not receive it.
    pub fn loss_day(&self, area: &str) -> String {
        format!("{}/loss/{area}/day", self.base())
    }
    /// Signed commands to the gateway (it subscribes, QoS 1).
    pub fn command(&self) -> String {
        format!("{}/command", self.base())
    }
    /// What became of each command (QoS 1, sequenced).
    pub fn command_result(&self) -> String {
        format!("{}/command/result", self.base())
    }
    /// The gateway's own health (retained, QoS 1, not sequenced): [`health_payload`].
    pub fn health(&self) -> String {
        format!("{}/health", self.base())
    }

    /// The QoS 1 reading message of the contract (the store adds `seq`).
    pub fn reading_message(&self, r: &Reading) -> Message {
        let values: serde_json::Map<String, Value> = r
            .values
            .iter()
            .map(|(k, v)| (k.clone(), json_number(*v)))
            .collect();
        of_kind(
            Message {
                topic: self.reading(&r.meter),
                payload: json!({"meter": r.meter, "ts": rfc3339_ms(r.ts_ms), "values": values})
                    .into(),
                qos: 1,
                retain: false,
                sequenced: true,
            },
            "reading",
        )
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

    /// The last will, registered with the broker when the gateway connects and published by
    /// the broker when the connection dies: `{"state": "offline", "ts": null, "last_will":
    /// true, "version"}`. It carries no time: the moment it would name is the connection's, not
    /// the death's (the broker's own receive time tells when it was published).
    pub fn last_will_payload() -> Vec<u8> {
        json!({
            "state": "offline",
            "ts": null,
            "last_will": true,
            "version": env!("CARGO_PKG_VERSION"),
        })
        .to_string()
        .into_bytes()
    }
}

/// The loss message of the contract, on `{prefix}/{gateway}/loss/{area}`, QoS 1, sequenced
/// (the store adds `"seq"`). Payload fields:
///
/// - `area` — the area id.
/// - `start`, `end` — the interval `[start, end)`, RFC 3339 UTC with milliseconds, aligned to
///   multiples of the area's `loss_interval_s` since the epoch.
/// - `supply_kwh` — energy that entered the area: supply meters' import + customers' export
///   (rooftop PV), kWh, primary side.
/// - `sales_kwh` — energy that left it through meters: customers' import + supply meters'
///   export, kWh.
/// - `loss_kwh` — `supply_kwh − sales_kwh`.
/// - `loss_pct` — `loss_kwh / supply_kwh × 100`; `null` when nothing entered the area or no
///   meter was measured, and then `no_loss_pct` says which (present only then).
/// - `coverage_pct` — share of the area's meters that had reads around both boundaries, %.
/// - `complete` — every meter had reads around both boundaries. When `false`, the missing
///   meters' energy was estimated from their recent rate (0 for a meter never read) and the
///   figures are indicative only; no verdict is drawn from them.
/// - `energy_coverage_pct` — share of the energy (all meters, import + export) that was
///   measured rather than estimated, %.
/// - `missing` — ids of the meters without reads around both boundaries.
/// - `suspects` — customers pointing at the cause, best first, only those at or above the
///   score threshold: `{"meter", "score", "reason", "detail"}` with `reason`
///   `"bypass_signature"` (consumption stepped down as the loss stepped up by about as much;
///   score = the matched step in standard errors) or `"stopped_register"` (current flows while
///   the energy register stands still; score = threshold × time stood still / the configured
///   time). `detail` is a sentence for people.
/// - `meters` — each meter's net energy over the interval (import − export), kWh, keyed by
///   meter id (estimated for missing meters).
pub fn loss_message(topics: &Topics, rec: &LossRecord) -> Message {
    let meters: Map<String, Value> = rec
        .per_meter
        .iter()
        .map(|(k, v)| (k.clone(), json_number(*v)))
        .collect();
    let suspects: Vec<Value> = rec
        .suspects
        .iter()
        .map(|s| {
            json!({
                "meter": s.meter,
                "score": json_number(s.score),
                "reason": s.reason,
                "detail": s.detail,
            })
        })
        .collect();
    let mut payload = loss_figures(
        &rec.area,
        rec.start_ms,
        rec.end_ms,
        [rec.supply_kwh, rec.sales_kwh, rec.loss_kwh],
        rec.loss_pct.map_or(Value::Null, json_number),
    );
    if let Some(why) = &rec.no_loss_pct {
        payload.insert("no_loss_pct".into(), json!(why));
    }
    payload.insert("coverage_pct".into(), json_number(rec.coverage_pct));
    payload.insert("complete".into(), json!(rec.complete));
    payload.insert(
        "energy_coverage_pct".into(),
        json_number(rec.energy_coverage_pct),
    );
    payload.insert("missing".into(), json!(rec.missing));
    payload.insert("suspects".into(), Value::Array(suspects));
    payload.insert("meters".into(), Value::Object(meters));
    of_kind(
        Message {
            topic: topics.loss(&rec.area),
            payload: Value::Object(payload).into(),
            qos: 1,
            retain: false,
            sequenced: true,
        },
        "loss",
    )
}

/// The rolling (real-time) loss of an area, as `meta loss_rolling/{area}` keeps it for
/// `status`: `{"area", "start", "end", "supply_kwh", "sales_kwh", "loss_kwh", "loss_pct"
/// (null when nothing entered), "coverage_pct"}`.
pub fn rolling_loss_body(r: &RollingLoss) -> Value {
    let mut body = loss_figures(
        &r.area,
        r.start_ms,
        r.end_ms,
        [r.supply_kwh, r.sales_kwh, r.loss_kwh],
        r.loss_pct.map_or(Value::Null, json_number),
    );
    body.insert("coverage_pct".into(), json_number(r.coverage_pct));
    Value::Object(body)
}

/// The details of a `high_loss` / `negative_loss` alarm: the interval that changed the
/// verdict, `{"area", "start", "end", "supply_kwh", "sales_kwh", "loss_kwh", "loss_pct"}`.
pub fn loss_verdict_details(v: &LossVerdict) -> Value {
    Value::Object(loss_figures(
        &v.area,
        v.start_ms,
        v.end_ms,
        [v.supply_kwh, v.sales_kwh, v.loss_kwh],
        json_number(v.value),
    ))
}

/// The figures every loss body starts with: area, window and the three energies
/// `[supply, sales, loss]`, then `loss_pct`.
fn loss_figures(
    area: &str,
    start_ms: i64,
    end_ms: i64,
    [supply, sales, loss]: [f64; 3],
    loss_pct: Value,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("area".into(), json!(area));
    m.insert("start".into(), json!(rfc3339_ms(start_ms)));
    m.insert("end".into(), json!(rfc3339_ms(end_ms)));
    m.insert("supply_kwh".into(), json_number(supply));
    m.insert("sales_kwh".into(), json_number(sales));
    m.insert("loss_kwh".into(), json_number(loss));
    m.insert("loss_pct".into(), loss_pct);
    m
}

/// The event message on `{prefix}/{gateway}/alarm/{kind}/{subject}`: QoS 1, sequenced.
///
/// Payload: `{"id", "kind", "subject", "subject_kind", "state": "raised"|"cleared",
/// "severity", "ts", "value", "threshold", "raised", "cleared" (null while raised),
/// "duration_s" (on clear: cleared − raised), "erc" (where the kind has one)}`, plus the kind's
/// details (keys that would shadow these are dropped). The store adds `"seq"`.
pub fn alarm_message(topics: &Topics, change: &AlarmChange) -> Message {
    let a = &change.alarm;
    let mut payload = alarm_fields(a);
    payload.insert("state".into(), json!(change.transition.as_str()));
    payload.insert("ts".into(), json!(rfc3339_ms(change.ts_ms)));
    if change.transition == Transition::Cleared {
        let end = a.cleared_ms.unwrap_or(change.ts_ms);
        payload.insert(
            "duration_s".into(),
            json_number((end - a.raised_ms) as f64 / 1000.0),
        );
    }
    of_kind(
        Message {
            topic: topics.alarm(a.kind.as_str(), &a.subject),
            payload: Value::Object(payload).into(),
            qos: 1,
            retain: false,
            sequenced: true,
        },
        "alarm",
    )
}

/// The retained message listing every active alarm on `{prefix}/{gateway}/alarm/active`, for
/// a headend that connects later. Sent again after every change (an empty list once nothing
/// is active). QoS 1, not sequenced: it is a state, not an event.
///
/// Payload: `{"ts", "count", "alarms": [{"id", "kind", "subject", "subject_kind", "severity",
/// "raised", "value", "threshold", "erc", ...details}]}`, ordered by id.
pub fn active_alarms_message(topics: &Topics, active: &[Alarm], now_ms: i64) -> Message {
    let alarms = active_alarms_list(active);
    let count = alarms.len();
    Message {
        topic: topics.alarm_active(),
        payload: json!({"ts": rfc3339_ms(now_ms), "count": count, "alarms": alarms}).into(),
        qos: 1,
        retain: true,
        sequenced: false,
    }
}

/// The `alarms` array of [`active_alarms_message`] (also what `meta alarms/active` keeps for
/// `status`).
pub fn active_alarms_list(active: &[Alarm]) -> Vec<Value> {
    let mut sorted: Vec<&Alarm> = active.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    sorted
        .into_iter()
        .map(|a| {
            let mut fields = alarm_fields(a);
            fields.remove("cleared");
            Value::Object(fields)
        })
        .collect()
}

/// The fields every alarm payload shares, with the details merged in.
fn alarm_fields(a: &Alarm) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), json!(a.id));
    m.insert("kind".into(), json!(a.kind.as_str()));
    m.insert("subject".into(), json!(a.subject));
    m.insert("subject_kind".into(), json!(a.subject_kind.as_str()));
    m.insert("severity".into(), json!(a.severity.as_str()));
    m.insert("value".into(), json_number(a.value));
    m.insert("threshold".into(), json_number(a.threshold));
    m.insert("raised".into(), json!(rfc3339_ms(a.raised_ms)));
    m.insert(
        "cleared".into(),
        a.cleared_ms
            .map(|t| json!(rfc3339_ms(t)))
            .unwrap_or(Value::Null),
    );
    if let Some(erc) = a.kind.erc() {
        m.insert("erc".into(), json!(erc));
    }
    if let Value::Object(details) = &a.details {
        for (k, v) in details {
            if !ALARM_ENVELOPE_KEYS.contains(&k.as_str()) && !m.contains_key(k) {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    m
}

/// Alarm payload keys owned by the envelope; details never shadow them.
const ALARM_ENVELOPE_KEYS: &[&str] = &["seq", "state", "ts"];

/// The daily message on `{prefix}/{gateway}/voltage/{meter}`: QoS 1, sequenced, one per
/// meter, phase and closed day.
///
/// Payload: `{"meter", "phase", "day": "YYYY-MM-DD", "start", "end", "monitored_s",
/// "above_s", "below_s", "outage_s", "qualified_pct" (null when nothing was monitored),
/// "min_v", "max_v" (null without reads), "upper_v", "lower_v", "reads"}`. The store adds
/// `"seq"`.
pub fn voltage_day_message(topics: &Topics, d: &DayRecord) -> Message {
    let opt = |v: Option<f64>| v.map(json_number).unwrap_or(Value::Null);
    of_kind(
        Message {
            topic: topics.voltage(&d.meter),
            payload: json!({
                "meter": d.meter,
                "phase": d.phase,
                "day": d.date(),
                "start": rfc3339_ms(d.day_start_ms),
                "end": rfc3339_ms(d.day_end_ms),
                "monitored_s": json_number(d.monitored_s),
                "above_s": json_number(d.above_s),
                "below_s": json_number(d.below_s),
                "outage_s": json_number(d.outage_s),
                "qualified_pct": opt(d.qualified_pct),
                "min_v": opt(d.min_v),
                "max_v": opt(d.max_v),
                "upper_v": json_number(d.upper_v),
                "lower_v": json_number(d.lower_v),
                "reads": d.reads,
            })
            .into(),
            qos: 1,
            retain: false,
            sequenced: true,
        },
        "voltage_day",
    )
}

/// The retained `{prefix}/{gateway}/meter/{meter}/state` message: online/offline and health.
///
/// Payload: `{"meter", "state": "online"|"offline"|"unknown", "ts", "bus", "unit", "model",
/// "last_ok", "polls", "success_rate_pct" (one decimal), "latency_ms" (whole ms),
/// "timeouts", "crc_errors", "wrong_unit", "exceptions", "consecutive_failures",
/// "last_error", "multiplier", "ct_ratio", "pt_ratio"}`: the ratios its readings were scaled
/// by (every quantity of a reading is primary-side; `null` for a meter no longer configured);
/// for a DL/T 645 meter also `"address"` and, once read, what the meter says about itself:
/// `"clock_skew_s"` (meter clock − gateway clock, s), `"clock_read"` (when),
/// `"power_down_count"`, `"cover_open_count"`, `"status_word_1"` (4 hex digits). QoS 1,
/// retained, not sequenced.
pub fn meter_state_message(topics: &Topics, s: &MeterState, ratios: Option<Ratios>) -> Message {
    let mut payload = json!({
            "meter": s.meter,
            "state": s.state_name(),
            "ts": rfc3339_ms(s.ts_ms),
            "bus": s.bus,
            "unit": s.unit,
            "model": s.model,
            "last_ok": s.last_ok_ms.map(rfc3339_ms),
            "polls": s.polls,
            "success_rate_pct": json_number(s.success_rate_pct()),
            "latency_ms": s.latency_whole_ms().map(json_number),
            "timeouts": s.timeouts,
            "crc_errors": s.crc_errors,
            "wrong_unit": s.wrong_unit,
            "exceptions": s.exceptions,
            "consecutive_failures": s.consecutive_failures,
            "last_error": s.last_error,
            "multiplier": ratios.map(|r| json_number(r.multiplier())),
            "ct_ratio": ratios.map(|r| json_number(r.ct)),
            "pt_ratio": ratios.map(|r| json_number(r.pt)),
    });
    if let Some(a) = &s.address {
        payload["address"] = json!(a);
    }
    if let Some(i) = &s.items {
        payload["clock_skew_s"] = json!(i.clock_skew_s.map(json_number));
        payload["clock_read"] = json!(rfc3339_ms(i.ts_ms));
        payload["power_down_count"] = json!(i.power_down_count);
        payload["cover_open_count"] = json!(i.cover_open_count);
        payload["status_word_1"] = json!(i.status_word_1.map(|w| format!("{w:04X}")));
    }
    Message {
        topic: topics.meter_state(&s.meter),
        payload: payload.into(),
        qos: 1,
        retain: true,
        sequenced: false,
    }
}

/// The monthly voltage quality (月电压合格率) of a meter's phase on
/// `{prefix}/{gateway}/voltage/{meter}/month`: QoS 1, sequenced, once the month's last day is
/// closed.
///
/// Payload: `{"meter", "phase", "month": "YYYY-MM" (local), "start", "end" (its local
/// midnights, RFC 3339 UTC), "monitored_s", "above_s", "below_s", "outage_s", "qualified_pct"
/// (null when nothing was monitored), "min_v", "max_v", "upper_v", "lower_v", "days" (days
/// with reads)}`.
pub fn voltage_month_message(topics: &Topics, m: &MonthRecord) -> Message {
    let opt = |v: Option<f64>| v.map(json_number).unwrap_or(Value::Null);
    of_kind(
        Message {
            topic: topics.voltage_month(&m.meter),
            payload: json!({
                "meter": m.meter,
                "phase": m.phase,
                "month": m.month,
                "start": rfc3339_ms(m.start_ms),
                "end": rfc3339_ms(m.end_ms),
                "monitored_s": json_number(m.monitored_s),
                "above_s": json_number(m.above_s),
                "below_s": json_number(m.below_s),
                "outage_s": json_number(m.outage_s),
                "qualified_pct": opt(m.qualified_pct),
                "min_v": opt(m.min_v),
                "max_v": opt(m.max_v),
                "upper_v": json_number(m.upper_v),
                "lower_v": json_number(m.lower_v),
                "days": m.days,
            })
            .into(),
            qos: 1,
            retain: false,
            sequenced: true,
        },
        "voltage_month",
    )
}

/// The monthly voltage quality of an area (its meters' phases summed) on
/// `{prefix}/{gateway}/voltage/area/{area}/month`: QoS 1, sequenced.
///
/// Payload: `{"area", "month", "start", "end", "monitored_s", "above_s", "below_s",
/// "qualified_pct" (null when nothing was monitored), "meters" (meters with figures)}`.
pub fn area_voltage_month_message(topics: &Topics, a: &AreaMonth) -> Message {
    of_kind(
        Message {
            topic: topics.area_voltage_month(&a.area),
            payload: json!({
                "area": a.area,
                "month": a.month,
                "start": rfc3339_ms(a.start_ms),
                "end": rfc3339_ms(a.end_ms),
                "monitored_s": json_number(a.monitored_s),
                "above_s": json_number(a.above_s),
                "below_s": json_number(a.below_s),
                "qualified_pct": a.qualified_pct.map(json_number).unwrap_or(Value::Null),
                "meters": a.meters,
            })
            .into(),
            qos: 1,
            retain: false,
            sequenced: true,
        },
        "voltage_area_month",
    )
}

/// A meter's daily or monthly freeze on `{prefix}/{gateway}/freeze/{meter}`: QoS 1, sequenced
/// (the store adds `"seq"`).
///
/// Payload: `{"meter", "kind": "day"|"month", "ts" (the freeze moment: local midnight, RFC 3339
/// UTC), "day" (the local date at it, `2026-11-23`: the register values at the start of that
/// day), "month" (the local month at it, `2026-11`), "source": "interpolated"|"extrapolated"|
/// "meter", "values": {QUANTITY: number} (the energy registers), "before", "after" (the reads it
/// was taken from, RFC 3339 UTC or null), "late" (taken after the day's collection report: the
/// meter was silent over midnight)}`.
pub fn freeze_message(topics: &Topics, f: &FreezeRecord) -> Message {
    let values: Map<String, Value> = f
        .values
        .iter()
        .map(|(k, v)| (k.clone(), json_number(*v)))
        .collect();
    let ts = |t: Option<i64>| t.map_or(Value::Null, |t| json!(rfc3339_ms(t)));
    of_kind(
        Message {
            topic: topics.freeze(&f.meter),
            payload: json!({
                "meter": f.meter,
                "kind": f.kind.as_str(),
                "ts": rfc3339_ms(f.ts_ms),
                "day": f.day,
                "month": f.month,
                "source": f.source.as_str(),
                "values": values,
                "before": ts(f.before_ms),
                "after": ts(f.after_ms),
                "late": f.late,
            })
            .into(),
            qos: 1,
            retain: false,
            sequenced: true,
        },
        "freeze",
    )
}

/// A block of a meter's load curve on `{prefix}/{gateway}/curve/{meter}`: QoS 1, sequenced
/// (the store adds `"seq"`), one message per meter and block (`[curve] block_min`).
///
/// Payload: `{"meter", "start", "end" (the block, RFC 3339 UTC; end exclusive), "day" (the
/// local date of its start), "interval_min", "points": [{"ts" (the curve point, RFC 3339 UTC),
/// "energy": {QUANTITY: number} (the energy registers at the point, interpolated between the
/// reads around it), "instant": {QUANTITY: number} (voltages, currents, powers, power factor,
/// frequency of the read nearest the point), "instant_ts" (when that read was taken)}]}`. A
/// point the meter was silent over is absent from `points`.
pub fn curve_message(topics: &Topics, b: &CurveBlock) -> Message {
    let numbers = |m: &std::collections::BTreeMap<String, f64>| -> Map<String, Value> {
        m.iter()
            .map(|(k, v)| (k.clone(), json_number(*v)))
            .collect()
    };
    let points: Vec<Value> = b
        .points
        .iter()
        .map(|p| {
            json!({
                "ts": rfc3339_ms(p.ts_ms),
                "energy": numbers(&p.energy),
                "instant": numbers(&p.instant),
                "instant_ts": rfc3339_ms(p.instant_ts_ms),
            })
        })
        .collect();
    of_kind(
        Message {
            topic: topics.curve(&b.meter),
            payload: json!({
                "meter": b.meter,
                "start": rfc3339_ms(b.start_ms),
                "end": rfc3339_ms(b.end_ms),
                "day": b.day,
                "interval_min": b.interval_min,
                "points": points,
            })
            .into(),
            qos: 1,
            retain: false,
            sequenced: true,
        },
        "curve",
    )
}

/// The day's collection success on `{prefix}/{gateway}/collection`: QoS 1, sequenced, once a
/// day at `[collection] report_at`.
///
/// Payload: `{"day" (local date whose midnight freeze was collected), "ts" (that midnight, RFC
/// 3339 UTC), "configured", "frozen", "rate_pct", "failed": [meter], "buses": [{"bus",
/// "configured", "frozen", "rate_pct", "failed"}], "areas": [{"area", ...the same}]}`.
pub fn collection_message(topics: &Topics, r: &CollectionReport) -> Message {
    let group = |g: &GroupSuccess| {
        let mut o = Map::new();
        o.insert(g.kind.as_str().into(), json!(g.id));
        o.insert("configured".into(), json!(g.configured));
        o.insert("frozen".into(), json!(g.frozen));
        o.insert("rate_pct".into(), json_number(g.rate_pct));
        o.insert("failed".into(), json!(g.failed));
        Value::Object(o)
    };
    let of = |kind| -> Vec<Value> {
        r.groups
            .iter()
            .filter(|g| g.kind == kind)
            .map(group)
            .collect()
    };
    of_kind(
        Message {
            topic: topics.collection(),
            payload: json!({
                "day": r.day,
                "ts": rfc3339_ms(r.ts_ms),
                "configured": r.configured,
                "frozen": r.frozen,
                "rate_pct": json_number(r.rate_pct),
                "failed": r.failed,
                "buses": of(GroupKind::Bus),
                "areas": of(GroupKind::Area),
            })
            .into(),
            qos: 1,
            retain: false,
            sequenced: true,
        },
        "collection",
    )
}

/// An area's daily line loss from its meters' daily freezes on
/// `{prefix}/{gateway}/loss/{area}/day`: QoS 1, sequenced, once a day with the collection report.
///
/// Payload: `{"area", "day" (the local day the energy flowed), "start", "end" (its local
/// midnights, RFC 3339 UTC), "supply_kwh", "sales_kwh", "loss_kwh", "loss_pct" (null when
/// nothing entered), "coverage_pct" (meters with both freezes, %), "complete", "missing"
/// (meters without both freezes, left out of the sums), "extrapolated" (meters whose freezes
/// were extrapolated)}`.
pub fn daily_loss_message(topics: &Topics, l: &DailyLoss) -> Message {
    let mut payload = loss_figures(
        &l.area,
        l.start_ms,
        l.end_ms,
        [l.supply_kwh, l.sales_kwh, l.loss_kwh],
        l.loss_pct.map_or(Value::Null, json_number),
    );
    payload.insert("day".into(), json!(l.day));
    payload.insert("coverage_pct".into(), json_number(l.coverage_pct));
    payload.insert("complete".into(), json!(l.complete));
    payload.insert("missing".into(), json!(l.missing));
    payload.insert("extrapolated".into(), json!(l.extrapolated));
    of_kind(
        Message {
            topic: topics.loss_day(&l.area),
            payload: Value::Object(payload).into(),
            qos: 1,
            retain: false,
            sequenced: true,
        },
        "loss_day",
    )
}

/// What became of a command, as `{prefix}/{gateway}/command/result` says it.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandResult {
    /// The command's id; `None` when the command could not be read or was not authentic.
    pub id: Option<String>,
    pub name: Option<String>,
    /// `rejected`, `accepted`, `done` or `failed`.
    pub state: &'static str,
    pub reason: Option<String>,
    pub data: Option<Value>,
    pub ts_ms: i64,
}

/// The result message on `{prefix}/{gateway}/command/result`: QoS 1, sequenced.
///
/// Payload: `{"id" (null when unreadable), "name" (null when unreadable), "state": "rejected" |
/// "accepted" | "done" | "failed", "reason" (rejected and failed only), "data" (done only, when
/// the command returns something), "ts"}`. The store adds `"seq"`. An accepted command gets
/// an `accepted` result at once and a `done` or `failed` one when it has run.
pub fn command_result_message(topics: &Topics, r: &CommandResult) -> Message {
    let mut payload = Map::new();
    payload.insert("id".into(), json!(r.id));
    payload.insert("name".into(), json!(r.name));
    payload.insert("state".into(), json!(r.state));
    if let Some(reason) = &r.reason {
        payload.insert("reason".into(), json!(reason));
    }
    if let Some(data) = &r.data {
        payload.insert("data".into(), data.clone());
    }
    payload.insert("ts".into(), json!(rfc3339_ms(r.ts_ms)));
    of_kind(
        Message {
            topic: topics.command_result(),
            payload: Value::Object(payload).into(),
            qos: 1,
            retain: false,
            sequenced: true,
        },
        "command_result",
    )
}

/// The data of a `ping` result: `{"pong": true, "version"}`.
pub fn ping_data() -> Value {
    json!({"pong": true, "version": env!("CARGO_PKG_VERSION")})
}

/// The data of a `read` result: `{"meters": [{"meter", "ts" (null without a reading),
/// "values": {QUANTITY: number}, "error" (null when read)}]}`, in the order asked.
pub fn read_data(reads: &[(String, Option<Reading>, Option<String>)]) -> Value {
    let meters: Vec<Value> = reads
        .iter()
        .map(|(meter, reading, error)| {
            let values: Map<String, Value> = reading
                .iter()
                .flat_map(|r| r.values.iter())
                .map(|(k, v)| (k.clone(), json_number(*v)))
                .collect();
            json!({
                "meter": meter,
                "ts": reading.as_ref().map(|r| rfc3339_ms(r.ts_ms)),
                "values": values,
                "error": error,
            })
        })
        .collect();
    json!({ "meters": meters })
}

/// One meter of a `time_sync` result: (meter, skew before s, skew after s, error).
pub type TimeSyncRow = (String, Option<f64>, Option<f64>, Option<String>);

/// The data of a `time_sync` result: `{"meters": [{"meter", "skew_before_s" (the clock skew,
/// meter − gateway, s, as last read before the sync; null if never read), "skew_after_s" (as
/// read after it; null when not read), "error" (null when read)}]}`.
pub fn time_sync_data(rows: &[TimeSyncRow]) -> Value {
    let meters: Vec<Value> = rows
        .iter()
        .map(|(meter, before, after, error)| {
            json!({
                "meter": meter,
                "skew_before_s": before.map(json_number),
                "skew_after_s": after.map(json_number),
                "error": error,
            })
        })
        .collect();
    json!({ "meters": meters })
}

/// The data of a `config_get` result: `{"file", "toml"}` — the configuration the gateway
/// runs with, as it was read at start, secrets redacted.
pub fn config_data(file: &str, toml: &str) -> Value {
    json!({"file": file, "toml": toml})
}

/// A sequenced message of `kind`: the payload names its kind in `kind_seq`, which the store
/// replaces with the kind's own counter (see `store::KIND_SEQ_FIELD`), so that a consumer
/// of one kind can find its own gaps. The kinds: [`KINDS`].
fn of_kind(mut message: Message, kind: &str) -> Message {
    if let Value::Object(map) = &mut *message.payload {
        map.insert(crate::store::KIND_SEQ_FIELD.into(), json!(kind));
    }
    message
}

/// Every kind of sequenced message, each with its own `kind_seq` counter; one kind is one
/// topic filter (`reading/+`, `alarm/+/+`, `voltage/+/month`, ...), so a subscriber to one
/// filter sees every number of its kind.
pub const KINDS: &[&str] = &[
    "reading",
    "loss",
    "loss_day",
    "alarm",
    "voltage_day",
    "voltage_month",
    "voltage_area_month",
    "freeze",
    "curve",
    "collection",
    "command_result",
];

/// A message re-published by `recall`: its original topic and payload (its original `seq`
/// in it), not sequenced again. `None` when the stored payload is not a JSON object.
pub fn recalled_message(topic: &str, payload: &str) -> Option<Message> {
    match serde_json::from_str::<Value>(payload) {
        Ok(v @ Value::Object(_)) => Some(Message {
            topic: topic.to_string(),
            payload: v.into(),
            qos: 1,
            retain: false,
            sequenced: false,
        }),
        _ => None,
    }
}

/// Marks a reading message stamped while the gateway's clock was not sane (before the build
/// date, or not synchronised when that is required): `"clock": "unsynchronized"` in its
/// payload. Additive: a reading stamped by a sane clock has no `clock` field.
pub fn mark_clock_unsynchronized(message: &mut Message) {
    if let Value::Object(payload) = &mut *message.payload {
        payload.insert("clock".into(), json!("unsynchronized"));
    }
}

/// Why the gateway process started, as the health message says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartReason {
    /// The previous run stopped cleanly (or this store is new).
    Normal,
    /// The previous run ended without a clean stop during the same boot: a crash, a kill, a
    /// watchdog restart.
    AfterCrash,
    /// The previous run ended without a clean stop and the box has booted since: power loss
    /// or a reboot that did not stop the service.
    AfterPowerLoss,
}

impl StartReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StartReason::Normal => "normal",
            StartReason::AfterCrash => "after_crash",
            StartReason::AfterPowerLoss => "after_power_loss",
        }
    }
}

/// One bus in the health message.
#[derive(Debug, Clone, PartialEq)]
pub struct BusHealth {
    pub name: String,
    /// Mean time between two readings of one meter of the bus over the interval (how long a
    /// round over the bus takes); `None` without two readings of a meter.
    pub cycle_s: Option<f64>,
    /// Answered polls in percent of the polls over the interval; `None` without polls.
    pub success_pct: Option<f64>,
    /// Polls over the interval.
    pub polls: u64,
    pub meters_online: usize,
    pub meters_total: usize,
}

/// The clock in the health message.
#[derive(Debug, Clone, PartialEq)]
pub struct ClockHealth {
    pub synchronized: bool,
    /// `timesyncd`, `kernel` or `unknown` (see `clock::SyncSource`).
    pub source: &'static str,
    /// Sane: at least the build date (and synchronised when that is required).
    pub sane: bool,
}

/// The gateway's own figures, published retained on `{prefix}/{gateway}/health`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    pub ts_ms: i64,
    pub uptime_s: u64,
    pub start_reason: StartReason,
    /// Seconds the interval figures (CPU, success rates) cover.
    pub interval_s: u64,
    /// The process's CPU time over the interval in percent of one core.
    pub cpu_pct: Option<f64>,
    /// Resident memory.
    pub rss_bytes: Option<u64>,
    /// The data directory's filesystem: space free to the gateway now, its lowest since start,
    /// and the filesystem's size.
    pub disk_free_bytes: Option<u64>,
    pub disk_free_min_bytes: Option<u64>,
    pub disk_total_bytes: Option<u64>,
    /// The store's files (database and WAL).
    pub store_bytes: Option<u64>,
    /// Messages in the outbox, and the age of the oldest.
    pub backlog: u64,
    pub backlog_oldest_age_s: Option<u64>,
    pub buses: Vec<BusHealth>,
    pub clock: ClockHealth,
    /// Commands rejected since start, by reason (`bad_signature`, `replayed`, ...).
    pub commands_rejected: std::collections::BTreeMap<String, u64>,
    /// Readings dropped since start (shed from memory while the store refused them).
    pub readings_dropped: u64,
    pub alarms_active: usize,
}

/// The retained health payload:
///
/// `{"ts", "version", "uptime_s", "start_reason": "normal" | "after_crash" |
/// "after_power_loss", "interval_s", "cpu_pct", "rss_bytes", "disk": {"free_bytes",
/// "free_min_bytes", "total_bytes"}, "store_bytes", "backlog": {"count", "oldest_age_s"},
/// "buses": {BUS: {"cycle_s", "success_pct", "polls", "meters_online", "meters_total"}},
/// "clock": {"synchronized", "source", "sane"}, "commands_rejected": {"total", REASON: n},
/// "readings_dropped", "alarms_active"}`. A figure that cannot be read is `null`. Not
/// sequenced: each one replaces the last.
pub fn health_payload(h: &HealthReport) -> Vec<u8> {
    let buses: Map<String, Value> = h
        .buses
        .iter()
        .map(|b| {
            (
                b.name.clone(),
                json!({
                    "cycle_s": b.cycle_s.map(json_number),
                    "success_pct": b.success_pct.map(json_number),
                    "polls": b.polls,
                    "meters_online": b.meters_online,
                    "meters_total": b.meters_total,
                }),
            )
        })
        .collect();
    let mut rejected: Map<String, Value> = h
        .commands_rejected
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    rejected.insert(
        "total".into(),
        json!(h.commands_rejected.values().sum::<u64>()),
    );
    json!({
        "ts": rfc3339_ms(h.ts_ms),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": h.uptime_s,
        "start_reason": h.start_reason.as_str(),
        "interval_s": h.interval_s,
        "cpu_pct": h.cpu_pct.map(json_number),
        "rss_bytes": h.rss_bytes,
        "disk": {
            "free_bytes": h.disk_free_bytes,
            "free_min_bytes": h.disk_free_min_bytes,
            "total_bytes": h.disk_total_bytes,
        },
        "store_bytes": h.store_bytes,
        "backlog": {"count": h.backlog, "oldest_age_s": h.backlog_oldest_age_s},
        "buses": buses,
        "clock": {
            "synchronized": h.clock.synchronized,
            "source": h.clock.source,
            "sane": h.clock.sane,
        },
        "commands_rejected": rejected,
        "readings_dropped": h.readings_dropped,
        "alarms_active": h.alarms_active,
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
#[path = "contract_tests.rs"]
mod tests;
