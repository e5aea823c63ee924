//! A meter's values by quantity name as the engines hold them for long: the curve's points and
//! last reads, the freezes' reads and frozen registers. A `BTreeMap<String, f64>` of 26
//! quantities costs a name string, a tree slot and a node share per value (about 1.5 KB for a
//! read of an SDM630); [`Values`] holds which of the contract's quantity names
//! ([`crate::model::QUANTITIES`]) are present as one bit each and their numbers side by side,
//! so the names are never copied (8 bytes a value). A name outside the contract (none comes
//! from a meter model, but a snapshot may hold anything) is kept in a map of its own.
//!
//! It reads and writes as the JSON object a `BTreeMap<String, f64>` makes — same keys, same
//! order, same numbers — so the engines' snapshots keep their shape, and iterates in that
//! order (byte order of the names).

use crate::model::QUANTITIES;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

const N: usize = QUANTITIES.len();
const _: () = assert!(N <= 64, "one bit a quantity name in a u64");

/// The contract's quantity names in byte order (the order of a `BTreeMap<String, _>`).
static NAMES: [&str; N] = sorted_names();

/// `a < b` in byte order, at compile time.
const fn less(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut i = 0;
    while i < a.len() && i < b.len() {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
        i += 1;
    }
    a.len() < b.len()
}

const fn sorted_names() -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = QUANTITIES[i];
        let mut j = i;
        while j > 0 && less(out[j], out[j - 1]) {
            let t = out[j];
            out[j] = out[j - 1];
            out[j - 1] = t;
            j -= 1;
        }
        i += 1;
    }
    out
}

/// The bit of a contract name.
fn slot(name: &str) -> Option<u32> {
    NAMES.binary_search(&name).ok().map(|i| i as u32)
}

/// Values by quantity name, compactly (see the module documentation).
#[derive(Clone, Default, PartialEq)]
pub struct Values {
    /// Bit `i`: `NAMES[i]` has a value.
    known: u64,
    /// The values of the names present, in bit order.
    values: Box<[f64]>,
    /// Names outside the contract, with their values. Boxed: 8 bytes in every value rather
    /// than 24 for a map that is almost always absent.
    #[allow(clippy::box_collection)]
    other: Option<Box<BTreeMap<String, f64>>>,
}

impl Values {
    /// The values of `pairs`; of a name given twice the last value counts (as when collecting
    /// into a map).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, f64)>) -> Values {
        let mut known = 0u64;
        let mut buf = [0.0f64; N];
        let mut other: Option<Box<BTreeMap<String, f64>>> = None;
        for (k, v) in pairs {
            match slot(k) {
                Some(i) => {
                    known |= 1 << i;
                    buf[i as usize] = v;
                }
                None => {
                    other.get_or_insert_default().insert(k.to_string(), v);
                }
            }
        }
        let values = (0..N)
            .filter(|i| known & (1 << i) != 0)
            .map(|i| buf[i])
            .collect();
        Values {
            known,
            values,
            other,
        }
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        match slot(name) {
            Some(i) => {
                let bit = 1u64 << i;
                (self.known & bit != 0)
                    .then(|| self.values[(self.known & (bit - 1)).count_ones() as usize])
            }
            None => self.other.as_ref()?.get(name).copied(),
        }
    }

    pub fn len(&self) -> usize {
        self.values.len() + self.other.as_ref().map_or(0, |o| o.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Names and values in name order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            mask: self.known,
            values: self.values.iter(),
            known: None,
            other: self.other.as_deref().map(|o| o.iter().peekable()),
        }
    }

    /// The same as a map (for the records that leave the engine).
    pub fn to_map(&self) -> BTreeMap<String, f64> {
        self.iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

impl<'a> FromIterator<(&'a str, f64)> for Values {
    fn from_iter<I: IntoIterator<Item = (&'a str, f64)>>(iter: I) -> Values {
        Values::from_pairs(iter)
    }
}

impl From<&BTreeMap<String, f64>> for Values {
    fn from(map: &BTreeMap<String, f64>) -> Values {
        Values::from_pairs(map.iter().map(|(k, v)| (k.as_str(), *v)))
    }
}

/// [`Values::iter`]: the contract's names and the others merged in name order.
pub struct Iter<'a> {
    mask: u64,
    values: std::slice::Iter<'a, f64>,
    /// The next contract name and value, taken from `mask` and `values`.
    known: Option<(&'static str, f64)>,
    other: Option<std::iter::Peekable<std::collections::btree_map::Iter<'a, String, f64>>>,
}

impl<'a> Iter<'a> {
    fn next_known(&mut self) -> Option<(&'static str, f64)> {
        if self.mask == 0 {
            return None;
        }
        let i = self.mask.trailing_zeros();
        self.mask &= self.mask - 1;
        Some((NAMES[i as usize], *self.values.next()?))
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, f64);

    fn next(&mut self) -> Option<(&'a str, f64)> {
        if self.other.is_none() {
            return self.next_known();
        }
        if self.known.is_none() {
            self.known = self.next_known();
        }
        let other = self.other.as_mut()?;
        match (self.known, other.peek()) {
            (Some((k, _)), Some((o, _))) if o.as_str() < k => {
                other.next().map(|(o, v)| (o.as_str(), *v))
            }
            (Some(kv), _) => {
                self.known = None;
                Some(kv)
            }
            (None, _) => other.next().map(|(o, v)| (o.as_str(), *v)),
        }
    }
}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Values {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Values, D::Error> {
        BTreeMap::<String, f64>::deserialize(d).map(|m| Values::from(&m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_are_every_contract_name_in_map_order() {
        let mut want: Vec<&str> = QUANTITIES.to_vec();
        want.sort();
        assert_eq!(NAMES.to_vec(), want);
    }

    #[test]
    fn it_reads_writes_and_iterates_as_the_map_does() {
        let map: BTreeMap<String, f64> = [
            ("voltage_l1_v", 230.1),
            ("energy_import_kwh", 1234.5678),
            ("zeta_custom", 1.0),
            ("alpha_custom", -2.0),
            ("power_kw", 0.1 + 0.2),
            ("frequency_hz", 49.98),
            ("m_custom", 3.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let v = Values::from(&map);
        assert_eq!(v.len(), map.len());
        assert_eq!(v.to_map(), map);
        let pairs: Vec<(String, f64)> = v.iter().map(|(k, x)| (k.to_string(), x)).collect();
        let want: Vec<(String, f64)> = map.iter().map(|(k, x)| (k.clone(), *x)).collect();
        assert_eq!(pairs, want);
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, serde_json::to_string(&map).unwrap());
        let back: Values = serde_json::from_str(&json).unwrap();
        assert_eq!(back, v);
        for (k, x) in &map {
            assert_eq!(v.get(k), Some(*x));
        }
        assert_eq!(v.get("voltage_l2_v"), None);
        assert_eq!(v.get("nope"), None);
    }

    #[test]
    fn contract_names_alone_need_no_map_and_the_last_value_counts() {
        let v: Values = [("power_kw", 1.0), ("current_l1_a", 2.0), ("power_kw", 3.0)]
            .into_iter()
            .collect();
        assert!(v.other.is_none());
        assert_eq!(v.len(), 2);
        assert_eq!(v.get("power_kw"), Some(3.0));
        assert_eq!(
            format!("{v:?}"),
            r#"{"current_l1_a": 2.0, "power_kw": 3.0}"#
        );
        assert!(Values::default().is_empty());
        assert_eq!(serde_json::to_string(&Values::default()).unwrap(), "{}");
    }
}
