//! A kept message stored once, as its `record` row (schema 7).
//!
//! A kept message (curve block, loss interval, freeze, voltage day or month, collection
//! report, daily loss, alarm event) is also a record whose body is the message's payload
//! before the store numbers it. So instead of a second full copy in `published`, the record
//! row carries what the store added — `seq`, `kind_seq` — and the message's topic; the outbox
//! row names it by `seq` with an empty payload, and the payload is rendered again here when
//! it is sent or recalled. A message is stored this way only when rendering its record gives
//! back exactly the payload committed (checked at commit, byte for byte); any other message
//! keeps its `published` copy.

use super::KIND_SEQ_FIELD;
use serde_json::Value;

/// The message of a record whose body (JSON text) is `body`, numbered `seq` and `kind_seq`
/// as `Store::commit` numbers a payload; `None` when the body is not a JSON object.
pub(super) fn render(body: &str, seq: u64, kind_seq: u64) -> Option<String> {
    let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(body) else {
        return None;
    };
    map.insert("seq".into(), seq.into());
    map.insert(KIND_SEQ_FIELD.into(), kind_seq.into());
    Some(Value::Object(map).to_string())
}
