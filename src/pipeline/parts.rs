//! The per-meter parts of an engine's snapshot joined into its whole JSON text at start,
//! without building a tree of it.
//!
//! Each meter's part of an engine's snapshot is kept under a key of its own (see
//! [`super::Analytics`] and [`crate::analytics::MeterParts`]); at start the engine's own part
//! (with an empty container at its pointer: an object by meter id, or a list whose items name
//! their `meter`) and the meters' parts are joined into one snapshot text for the engine to
//! restore from. The text is spliced from raw slices ([`RawValue`]): a thousand meters' parts
//! parsed into a `serde_json::Value` tree take megabytes for a moment, and the gateway's heap
//! keeps much of such a moment resident (docs/benchmarks.md (j)). The objects along the pointer
//! are written again with their keys in order of name; everything else as it was.

use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// What the container at the pointer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    /// An object of parts by meter id.
    Object,
    /// A list whose items each name their `meter`; a meter's part is the list of its own.
    List,
}

/// The whole snapshot from its engine's own part `base` and the meters' `parts` (each a JSON
/// text, as [`crate::analytics::MeterParts::part_json`] wrote it): an object part goes under its meter id, a list part's items are added to
/// the list; a `null` part (a meter the engine no longer held) is left out. A part that cannot
/// be read or does not fit the container is left out and given to `refused` with the reason
/// (that meter starts afresh). `base` is returned as it is when it has no container at
/// `pointer` (a snapshot written whole, before the parts existed, is read as it is).
pub fn join(
    base: &str,
    pointer: &str,
    parts: &[(String, String)],
    refused: &mut dyn FnMut(&str, String),
) -> String {
    if parts.is_empty() {
        return base.to_string();
    }
    let path: Vec<&str> = pointer.split('/').skip(1).collect();
    let joined = replace_at(
        base,
        &path,
        &mut |container| match container_of(container)? {
            Container::Object => {
                let mut map: BTreeMap<String, &str> =
                    serde_json::from_str::<BTreeMap<String, &RawValue>>(container)
                        .ok()?
                        .into_iter()
                        .map(|(k, v)| (k, v.get()))
                        .collect();
                for (meter, text) in parts {
                    match serde_json::from_str::<&RawValue>(text) {
                        Err(e) => refused(meter, e.to_string()),
                        Ok(raw) if raw.get() == "null" => {}
                        Ok(raw) => {
                            map.insert(meter.clone(), raw.get());
                        }
                    }
                }
                let mut out = String::with_capacity(
                    map.iter()
                        .map(|(k, v)| k.len() + v.len() + 4)
                        .sum::<usize>()
                        + 2,
                );
                write_object(&mut out, map.iter().map(|(k, v)| (k.as_str(), *v)));
                Some(out)
            }
            Container::List => {
                let mut items: Vec<&str> = serde_json::from_str::<Vec<&RawValue>>(container)
                    .ok()?
                    .into_iter()
                    .map(RawValue::get)
                    .collect();
                for (meter, text) in parts {
                    match serde_json::from_str::<&RawValue>(text) {
                        Err(e) => refused(meter, e.to_string()),
                        Ok(raw) if raw.get() == "null" => {}
                        Ok(raw) => match serde_json::from_str::<Vec<&RawValue>>(raw.get()) {
                            Ok(list) => items.extend(list.into_iter().map(RawValue::get)),
                            Err(_) => refused(meter, "not a list of its items".into()),
                        },
                    }
                }
                let mut out =
                    String::with_capacity(items.iter().map(|v| v.len() + 1).sum::<usize>() + 2);
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(v);
                }
                out.push(']');
                Some(out)
            }
        },
    );
    joined.unwrap_or_else(|| base.to_string())
}

/// `text` with the value at `path` replaced by what `with` makes of it; `None` when there is
/// no value there or `with` gives none. The objects along the path are written again with
/// their keys in order of name (as `serde_json::Value` writes them); everything else as it was.
fn replace_at<'a>(
    text: &'a str,
    path: &[&str],
    with: &mut dyn FnMut(&'a str) -> Option<String>,
) -> Option<String> {
    let Some((first, rest)) = path.split_first() else {
        return with(text);
    };
    let map: BTreeMap<String, &'a RawValue> = serde_json::from_str(text).ok()?;
    let inner = replace_at(map.get(*first)?.get(), rest, with)?;
    let mut out = String::with_capacity(text.len() - map[*first].get().len() + inner.len());
    write_object(
        &mut out,
        map.iter().map(|(k, v)| {
            let v = if k == first { inner.as_str() } else { v.get() };
            (k.as_str(), v)
        }),
    );
    Some(out)
}

/// Writes an object of already-serialized values.
fn write_object<'a>(out: &mut String, entries: impl Iterator<Item = (&'a str, &'a str)>) {
    out.push('{');
    for (i, (k, v)) in entries.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(k).expect("a string serializes"));
        out.push(':');
        out.push_str(v);
    }
    out.push('}');
}

fn container_of(text: &str) -> Option<Container> {
    match text.trim_start().as_bytes().first()? {
        b'{' => Some(Container::Object),
        b'[' => Some(Container::List),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn value(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn join_leaves_out_null_and_unreadable_parts_and_keeps_a_whole_snapshot() {
        let parts = vec![
            ("m1".to_string(), r#"{"a":1}"#.to_string()),
            ("gone".to_string(), "null".to_string()),
            ("bad".to_string(), "{not json".to_string()),
        ];
        let mut refused = Vec::new();
        // A snapshot written whole before the parts existed keeps what it held; a part wins.
        let whole = join(
            r#"{"meters":{"m0":{"a":0},"m1":{"a":9}}}"#,
            "/meters",
            &parts,
            &mut |m, _| refused.push(m.to_string()),
        );
        assert_eq!(
            value(&whole),
            json!({"meters": {"m0": {"a": 0}, "m1": {"a": 1}}})
        );
        assert_eq!(refused, ["bad"]);

        // A list takes only list parts.
        let mut refused = Vec::new();
        let whole = join(
            r#"{"series":[]}"#,
            "/series",
            &[
                ("a".to_string(), r#"[{"meter":"a"}]"#.to_string()),
                ("b".to_string(), r#"{"meter":"b"}"#.to_string()),
            ],
            &mut |m, _| refused.push(m.to_string()),
        );
        assert_eq!(value(&whole), json!({"series": [{"meter": "a"}]}));
        assert_eq!(refused, ["b"]);

        // No container at the pointer: the base as it is.
        let base = r#"{"other":1}"#;
        assert_eq!(join(base, "/meters", &parts, &mut |_, _| {}), base);
    }
}
