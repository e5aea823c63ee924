//! A reading's message stored once, as its history row (schema 7).
//!
//! The message of a reading (`{prefix}/{gateway}/reading/{meter}`) says nothing its history
//! row does not: the meter, the time, the values, and what the store and the writer added —
//! `seq`, `kind_seq` and the `"clock": "unsynchronized"` mark. So instead of a second full
//! copy in `published`, the row carries those three, the outbox row names it by `seq` with an
//! empty payload, and the payload is rendered again here when it is sent or recalled. A
//! message is stored this way only when rendering its reading gives back exactly its payload
//! (checked at commit, field by field); any other message keeps its `published` copy.
//!
//! The payload's shape is the contract's (`uplink::contract::Topics::reading_message`,
//! checked equal by a test there); it is rendered here because the store may not import the
//! uplink.

use super::KIND_SEQ_FIELD;
use crate::clock::rfc3339_ms;
use crate::model::{Reading, json_number};
use serde_json::{Map, Value};

/// The kind name of reading messages (their `kind_seq` counter).
pub const READING_KIND: &str = "reading";

/// The topic level before the meter id in a reading's topic.
const READING_LEVEL: &str = "/reading/";

/// The payload of a reading's message as the contract renders it, before the store numbers
/// it: `{"meter", "ts", "values"}` (values rounded as every payload number is).
pub fn reading_payload(r: &Reading) -> Map<String, Value> {
    let values: Map<String, Value> = r
        .values
        .iter()
        .map(|(k, v)| (k.clone(), json_number(*v)))
        .collect();
    let mut map = Map::new();
    map.insert("meter".into(), Value::String(r.meter.clone()));
    map.insert("ts".into(), Value::String(rfc3339_ms(r.ts_ms)));
    map.insert("values".into(), Value::Object(values));
    map
}

/// Whether `payload` on `topic` (a sequenced message, not yet numbered) is exactly the message
/// of reading `r`: `Some((topic base, clock mark))` when it is.
pub(super) fn is_message_of(
    r: &Reading,
    topic: &str,
    payload: &Map<String, Value>,
) -> Option<(String, bool)> {
    let base = topic.strip_suffix(&r.meter)?.strip_suffix(READING_LEVEL)?;
    let mut expected = reading_payload(r);
    expected.insert(KIND_SEQ_FIELD.into(), Value::String(READING_KIND.into()));
    let clock = match payload.get("clock") {
        None => false,
        Some(Value::String(s)) if s == "unsynchronized" => {
            expected.insert("clock".into(), Value::String(s.clone()));
            true
        }
        Some(_) => return None,
    };
    (expected == *payload).then(|| (base.to_string(), clock))
}

/// The topic of `meter`'s readings under `base` (`{prefix}/{gateway}`).
pub(super) fn reading_topic(base: &str, meter: &str) -> String {
    format!("{base}{READING_LEVEL}{meter}")
}

/// The message of reading `r` as it was published: numbered `seq` and `kind_seq`, marked when
/// the clock was unsynchronized.
pub(super) fn render(r: &Reading, seq: u64, kind_seq: u64, clock_unsynchronized: bool) -> Vec<u8> {
    let mut map = reading_payload(r);
    map.insert(KIND_SEQ_FIELD.into(), kind_seq.into());
    map.insert("seq".into(), seq.into());
    if clock_unsynchronized {
        map.insert("clock".into(), Value::String("unsynchronized".into()));
    }
    Value::Object(map).to_string().into_bytes()
}
