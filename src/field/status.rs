//! `amr-gateway status`: what a running or stopped gateway's store says — per bus and meter
//! online/offline, last reading, success rate, latency and errors; the outbox backlog and its
//! age; per area the rolling loss and the latest loss interval (with its missing meters and
//! suspects) and its latest daily loss from the freezes; the active alarms and the recent alarm
//! events; recent voltage-quality days; the latest day's collection success (meters with a
//! daily freeze, per bus and area, and which failed).
//!
//! What it reads, as the gateway's store writer keeps it, under the store's names: each
//! meter's typed [`MeterState`]; the records of [`RecordKind::Loss`], [`RecordKind::Alarm`]
//! [`RecordKind::VoltageDay`], [`RecordKind::LossDay`] and [`RecordKind::Collection`];
//! [`MetaKey::LossRolling`] and [`MetaKey::ActiveAlarms`].
//!
//! It only reads the store (SQLite in WAL mode lets it do so while the daemon writes). Whether
//! the daemon runs it learns from the store's lock ([`StoreLock::holder`]): a dead daemon is said
//! plainly, with the age of its last heartbeat, so stale meter states are not taken for live.

use crate::clock::{now_ms, rfc3339_ms};
use crate::config::Config;
use crate::model::json_number;
use crate::store::{MetaKey, MeterState, RecordKind, Store, StoreLock};
use serde_json::{Value, json};

/// How far back `status` counts the headend's commands (rejected ones especially).
const COMMANDS_WINDOW_MS: i64 = 86_400_000;

/// Everything `status` shows, as JSON (the table is rendered from it).
pub fn collect(config: &Config) -> Result<Value, String> {
    let db = config.db_path();
    if !db.exists() {
        return Err(format!(
            "no store at {}: the gateway has not run with this configuration yet (data_dir = {})",
            db.display(),
            config.gateway.data_dir.display()
        ));
    }
    let store = Store::open(&db, &config.store).map_err(|e| e.to_string())?;
    let now = now_ms();
    let states = store.meter_states().map_err(|e| e.to_string())?;
    let (backlog, oldest) = store.backlog().map_err(|e| e.to_string())?;
    let mut buses = Vec::new();
    for bus in &config.buses {
        let mut meters = Vec::new();
        for m in config.meters.iter().filter(|m| m.bus == bus.name) {
            let st: Option<&MeterState> = states.get(&m.id);
            let last = store.latest_reading(&m.id).map_err(|e| e.to_string())?;
            meters.push(json!({
                "meter": m.id,
                "unit": m.unit,
                "address": m.address,
                "model": m.model,
                "state": st.map_or("unknown", MeterState::state_name),
                "last_reading": last.as_ref().map(|r| rfc3339_ms(r.ts_ms)),
                "last_reading_age_s": last.as_ref().map(|r| (now - r.ts_ms) / 1000),
                "energy_import_kwh": last.as_ref().and_then(|r| r.values.get("energy_import_kwh").copied()),
                "success_rate_pct": st.map(|s| json_number(s.success_rate_pct())),
                "latency_ms": st.and_then(MeterState::latency_whole_ms).map(json_number),
                "timeouts": st.map(|s| s.timeouts),
                "crc_errors": st.map(|s| s.crc_errors),
                "last_error": st.and_then(|s| s.last_error.clone()),
                "clock_skew_s": st
                    .and_then(|s| s.items.as_ref())
                    .and_then(|i| i.clock_skew_s)
                    .map(json_number),
                "cover_open_count": st.and_then(|s| s.items.as_ref()).and_then(|i| i.cover_open_count),
            }));
        }
        buses.push(json!({
            "bus": bus.name,
            "protocol": bus.protocol.name(),
            "endpoint": bus.device.as_ref().map(|d| d.display().to_string()).or_else(|| bus.address.clone()),
            "meters": meters,
        }));
    }
    let mut areas = Vec::new();
    for a in &config.areas {
        let last = store
            .records(RecordKind::Loss, Some(&a.id), 0, i64::MAX, 1)
            .map_err(|e| e.to_string())?;
        let rolling = store
            .meta(&MetaKey::LossRolling(a.id.clone()))
            .map_err(|e| e.to_string())?
            .and_then(|s| serde_json::from_str::<Value>(&s).ok());
        let last_day = store
            .records(RecordKind::LossDay, Some(&a.id), 0, i64::MAX, 1)
            .map_err(|e| e.to_string())?;
        areas.push(json!({
            "area": a.id,
            "last_interval": last.first().map(|r| r.body.clone()),
            "rolling": rolling,
            "last_day": last_day.first().map(|r| r.body.clone()),
        }));
    }
    let alarms = store
        .meta(&MetaKey::ActiveAlarms)
        .map_err(|e| e.to_string())?
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .unwrap_or(json!([]));
    let alarm_events = store
        .records(RecordKind::Alarm, None, now - 7 * 86_400_000, i64::MAX, 20)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|r| r.body)
        .collect::<Vec<_>>();
    let voltage = store
        .records(
            RecordKind::VoltageDay,
            None,
            now - 2 * 86_400_000,
            i64::MAX,
            500,
        )
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|r| r.body)
        .collect::<Vec<_>>();
    // Whether a daemon runs on this store: it holds the store's lock while it runs, and its
    // writer stamps a heartbeat with its analytics ticks (at least every 10 s).
    let holder = StoreLock::holder(&config.gateway.data_dir);
    let meta_ms = |key: MetaKey| -> Result<Option<i64>, String> {
        Ok(store
            .meta(&key)
            .map_err(|e| e.to_string())?
            .and_then(|v| v.parse().ok()))
    };
    let heartbeat = meta_ms(MetaKey::LastAlive)?;
    let last_ack = meta_ms(MetaKey::LastAck)?;
    let version = store
        .meta(&MetaKey::DaemonVersion)
        .map_err(|e| e.to_string())?;
    // Commands from the headend over the last 24 h, from the audit records. The daemon's own
    // counters (since it started, by reason) live in its memory: its `status` command adds
    // them to this object (`rejected_total`, `rejected`).
    let commands = store
        .command_counts(now - COMMANDS_WINDOW_MS)
        .map_err(|e| e.to_string())?;
    let commands = json!({
        "window_h": COMMANDS_WINDOW_MS / 3_600_000,
        "rejected_24h": commands.by_state.get("rejected").copied().unwrap_or(0),
        "by_state_24h": commands.by_state,
        "rejected_by_key_24h": commands.rejected_by_key,
        "last_rejected": commands.last_rejected.map(|r| json!({
            "at": rfc3339_ms(r.received_ms),
            "id": r.command_id,
            "key": r.key_id,
            "command": r.name,
            "reason": r.reason,
        })),
    });
    let collection = store
        .records(RecordKind::Collection, None, 0, i64::MAX, 1)
        .map_err(|e| e.to_string())?
        .pop()
        .map(|r| r.body);
    Ok(json!({
        "gateway": config.gateway.id,
        "store": db.display().to_string(),
        "now": rfc3339_ms(now),
        "daemon": {
            "running": holder.is_some(),
            "pid": holder.flatten(),
            "version": version,
            "heartbeat": heartbeat.map(rfc3339_ms),
            "heartbeat_age_s": heartbeat.map(|h| (now - h) / 1000),
        },
        "last_seq": store.last_seq().map_err(|e| e.to_string())?,
        "outbox": {
            "backlog": backlog,
            "oldest": oldest.map(rfc3339_ms),
            "oldest_age_s": oldest.map(|o| (now - o) / 1000),
            "last_ack": last_ack.map(rfc3339_ms),
            "last_ack_age_s": last_ack.map(|a| (now - a) / 1000),
        },
        "buses": buses,
        "areas": areas,
        "alarms": alarms,
        "alarm_events": alarm_events,
        "voltage_quality": voltage,
        "collection": collection,
        "commands": commands,
    }))
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A number with `decimals` places, `-` when absent.
fn num(v: &Value, decimals: usize) -> String {
    v.as_f64()
        .map(|x| format!("{x:.decimals$}"))
        .unwrap_or_else(|| "-".into())
}

fn age(v: &Value) -> String {
    match v.as_i64() {
        None => "never".into(),
        Some(a) if a < 120 => format!("{a} s ago"),
        Some(a) if a < 7200 => format!("{} min ago", a / 60),
        Some(a) => format!("{} h ago", a / 3600),
    }
}

/// The human-readable rendering of [`collect`]'s JSON.
pub fn table(st: &Value) -> String {
    let mut out = format!(
        "gateway {} · store {} · last seq {}\n",
        s(&st["gateway"]),
        s(&st["store"]),
        s(&st["last_seq"])
    );
    let daemon = &st["daemon"];
    let running = daemon["running"].as_bool().unwrap_or(false);
    let version = daemon["version"]
        .as_str()
        .map(|v| format!(", version {v}"))
        .unwrap_or_default();
    if running {
        let pid = daemon["pid"]
            .as_u64()
            .map(|p| format!(" (pid {p}{version})"))
            .unwrap_or_default();
        out += &format!(
            "daemon: running{pid}, last heartbeat {}\n",
            age(&daemon["heartbeat_age_s"])
        );
    } else {
        out += &format!(
            "daemon: NOT RUNNING (last heartbeat {}{version}): nothing is being read or sent; \
             the states below are as it last saw them\n",
            age(&daemon["heartbeat_age_s"])
        );
    }
    if let Some(rejected) = st["commands"]["rejected_24h"].as_u64().filter(|n| *n > 0) {
        let last = &st["commands"]["last_rejected"];
        out += &format!(
            "commands: {rejected} rejected in the last 24 h; last at {} (key {}): {}\n",
            s(&last["at"]),
            s(&last["key"]),
            s(&last["reason"])
        );
    }
    let backlog = st["outbox"]["backlog"].as_u64().unwrap_or(0);
    let acked = format!(
        "the broker last acknowledged a message {}",
        age(&st["outbox"]["last_ack_age_s"])
    );
    if backlog == 0 {
        out += &format!("outbox: empty (everything delivered); {acked}\n");
    } else {
        out += &format!(
            "outbox: {backlog} {} waiting, oldest {}; {acked}{}\n",
            if backlog == 1 { "message" } else { "messages" },
            age(&st["outbox"]["oldest_age_s"]),
            if running {
                ""
            } else {
                " (they go out when the daemon runs again)"
            }
        );
    }
    for bus in st["buses"].as_array().into_iter().flatten() {
        out += &format!(
            "\nbus {} ({} {})\n",
            s(&bus["bus"]),
            s(&bus["protocol"]),
            s(&bus["endpoint"])
        );
        let w = bus["meters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| s(&m["meter"]).len())
            .max()
            .unwrap_or(5)
            .max(5);
        out += &format!(
            "  {:<w$} {:>4}  {:<16} {:<8} {:<14} {:>8} {:>8} {:>8} {:>4}\n",
            "meter",
            "unit",
            "model",
            "state",
            "last reading",
            "success",
            "latency",
            "timeouts",
            "crc"
        );
        for m in bus["meters"].as_array().into_iter().flatten() {
            out += &format!(
                "  {:<w$} {:>4}  {:<16} {:<8} {:<14} {:>8} {:>8} {:>8} {:>4}\n",
                s(&m["meter"]),
                s(&m["unit"]),
                s(&m["model"]),
                s(&m["state"]),
                age(&m["last_reading_age_s"]),
                m["success_rate_pct"]
                    .as_f64()
                    .map(|v| format!("{v:.1} %"))
                    .unwrap_or("-".into()),
                m["latency_ms"]
                    .as_f64()
                    .map(|v| format!("{v:.0} ms"))
                    .unwrap_or("-".into()),
                s(&m["timeouts"]),
                s(&m["crc_errors"]),
            );
            if let Some(skew) = m["clock_skew_s"].as_f64() {
                out += &format!("  {:<w$} meter clock {skew:+.1} s off the gateway's\n", "");
            }
            if let Some(e) = m["last_error"].as_str() {
                out += &format!("  {:<w$} last error: {e}\n", "");
            }
        }
    }
    for a in st["areas"].as_array().into_iter().flatten() {
        out += &format!("\narea {}\n", s(&a["area"]));
        let r = &a["rolling"];
        if r.is_object() {
            out += &format!(
                "  now (rolling):  loss {} kWh = {} % of {} kWh supplied ({} to {})\n",
                num(&r["loss_kwh"], 3),
                num(&r["loss_pct"], 1),
                num(&r["supply_kwh"], 3),
                s(&r["start"]),
                s(&r["end"])
            );
        }
        let l = &a["last_interval"];
        if l.is_object() {
            out += &format!(
                "  last interval:  {} to {}: loss {} kWh = {} %, coverage {} %{}\n",
                s(&l["start"]),
                s(&l["end"]),
                num(&l["loss_kwh"], 3),
                num(&l["loss_pct"], 1),
                num(&l["coverage_pct"], 1),
                if l["complete"] == json!(false) {
                    " (incomplete)"
                } else {
                    ""
                }
            );
            if let Some(missing) = l["missing"].as_array().filter(|m| !m.is_empty()) {
                let ids: Vec<String> = missing.iter().map(s).collect();
                out += &format!("  missing meters: {}\n", ids.join(", "));
            }
            for sus in l["suspects"].as_array().into_iter().flatten() {
                out += &format!(
                    "  suspect {} ({}, score {}): {}\n",
                    s(&sus["meter"]),
                    s(&sus["reason"]),
                    s(&sus["score"]),
                    s(&sus["detail"])
                );
            }
        } else {
            out += "  no closed interval yet\n";
        }
        let d = &a["last_day"];
        if d.is_object() {
            out += &format!(
                "  last day:       {} (from the freezes): loss {} kWh = {} % of {} kWh, \
                 coverage {} %{}\n",
                s(&d["day"]),
                num(&d["loss_kwh"], 3),
                num(&d["loss_pct"], 1),
                num(&d["supply_kwh"], 3),
                num(&d["coverage_pct"], 1),
                if d["complete"] == json!(false) {
                    " (incomplete)"
                } else {
                    ""
                }
            );
        }
    }
    let c = &st["collection"];
    if c.is_object() {
        out += &format!(
            "\ncollection {}: {} of {} meters with a daily freeze ({} %)\n",
            s(&c["day"]),
            s(&c["frozen"]),
            s(&c["configured"]),
            num(&c["rate_pct"], 1)
        );
        for (key, list) in [("bus", &c["buses"]), ("area", &c["areas"])] {
            for g in list.as_array().into_iter().flatten() {
                let failed: Vec<String> = g["failed"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(s)
                    .collect();
                out += &format!(
                    "  {key} {:<14} {}/{} ({} %){}\n",
                    s(&g[key]),
                    s(&g["frozen"]),
                    s(&g["configured"]),
                    num(&g["rate_pct"], 1),
                    if failed.is_empty() {
                        String::new()
                    } else {
                        format!("  failed: {}", failed.join(", "))
                    }
                );
            }
        }
    }
    let alarms = st["alarms"].as_array().cloned().unwrap_or_default();
    out += &format!("\nactive alarms: {}\n", alarms.len());
    for al in &alarms {
        out += &format!(
            "  {:<18} {:<16} {:<8} since {}  value {} threshold {}\n",
            s(&al["kind"]),
            s(&al["subject"]),
            s(&al["severity"]),
            s(&al["raised"]),
            s(&al["value"]),
            s(&al["threshold"])
        );
    }
    let events = st["alarm_events"].as_array().cloned().unwrap_or_default();
    if !events.is_empty() {
        out += "\nrecent alarm events (last 7 days, newest last)\n";
        for e in &events {
            out += &format!(
                "  {} {:<8} {:<18} {:<16} value {} threshold {}\n",
                s(&e["ts"]),
                s(&e["state"]),
                s(&e["kind"]),
                s(&e["subject"]),
                s(&e["value"]),
                s(&e["threshold"])
            );
        }
    }
    let vq = st["voltage_quality"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !vq.is_empty() {
        out += "\nvoltage quality (recent days)\n";
        for d in &vq {
            out += &format!(
                "  {:<12} {:<3} {}  qualified {} %  above {} s  below {} s  min {} V  max {} V\n",
                s(&d["meter"]),
                s(&d["phase"]),
                s(&d["day"]),
                s(&d["qualified_pct"]),
                s(&d["above_s"]),
                s(&d["below_s"]),
                s(&d["min_v"]),
                s(&d["max_v"])
            );
        }
    }
    out
}
