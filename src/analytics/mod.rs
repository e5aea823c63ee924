//! Analytics over readings: line loss of areas, alarm rules, voltage quality, daily and monthly
//! freezes with the daily loss they give (`freeze`), load curves (`curve`), collection success
//! (`collection`), and the domain
//! rules they share (`band`: the supply voltage band; `register`: a register that went down or
//! stood still while load flowed; `values`: a meter's values by quantity name, held compactly).
//!
//! Every engine here is a pure, deterministic state machine fed with readings, meter states and
//! timestamps: no clock, no I/O. They take their own settings types and return typed records
//! and events (loss intervals and verdicts, alarm changes, voltage days); they import only the
//! leaf types ([`crate::model`], [`crate::clock`]). The pipeline ([`crate::pipeline`]) feeds
//! them and stores what they decide; the uplink's contract renders it.

pub mod alarms;
pub mod band;
pub mod collection;
pub mod curve;
pub mod freeze;
pub mod loss;
pub mod register;
pub mod values;
pub mod voltage;

use std::collections::BTreeMap;

/// An engine whose snapshot holds a part per meter (an object by meter id, or a list whose
/// items name their meter), saved under keys of their own and written only when changed.
/// Each part is serialized on its own, straight from the engine's state: never the whole
/// snapshot at once, which with a thousand meters is megabytes for a moment (and a heap that
/// stays that large, docs/benchmarks.md (j)).
pub trait MeterParts {
    type Snapshot: serde::Serialize;
    /// The snapshot without any meter's part: an empty container where they go.
    fn snapshot_rest(&self) -> Self::Snapshot;
    /// The meters the snapshot holds a part for, in order of id.
    fn part_meters(&self) -> Vec<&str>;
    /// One meter's part as JSON: the value under its id in the snapshot's object, or the list
    /// of its items in the snapshot's list. `None` for a meter it holds nothing for.
    fn part_json(&self, meter: &str) -> Option<String>;
}

/// A part of an engine's snapshot as JSON.
fn part_json<T: serde::Serialize>(part: &T) -> String {
    serde_json::to_string(part).expect("snapshots serialize")
}

/// Rebuilds a map of the engines' per-meter state with full nodes when it holds more entries
/// than when last rebuilt (`packed`; kept by the caller, lowered when entries go). A map that
/// grew one meter at a time in id order — as the meters' first readings come — keeps its
/// nodes a little over half full: a third of a thousand meters' entries is empty room.
/// Rebuilt from its sorted entries, it is full. Only a map that grew is rebuilt, so this
/// costs a copy of the map a few times while the meters first report, nothing after.
fn pack<K: Ord, V>(map: &mut BTreeMap<K, V>, packed: &mut usize) {
    if map.len() > *packed {
        *map = std::mem::take(map).into_iter().collect();
    }
    *packed = map.len();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_is_rebuilt_only_when_it_grew_and_keeps_its_entries() {
        let mut map: BTreeMap<String, u32> = (0..100).map(|i| (format!("m{i:04}"), i)).collect();
        let mut packed = 0;
        pack(&mut map, &mut packed);
        assert_eq!(packed, 100);
        map.retain(|_, v| *v % 2 == 0);
        pack(&mut map, &mut packed);
        assert_eq!(packed, 50, "lowered when entries went");
        map.insert("m9999".into(), 7);
        pack(&mut map, &mut packed);
        assert_eq!(packed, 51);
        let want: BTreeMap<String, u32> = (0..100)
            .filter(|i| i % 2 == 0)
            .map(|i| (format!("m{i:04}"), i))
            .chain([("m9999".to_string(), 7)])
            .collect();
        assert_eq!(map, want);
    }
}
