//! A message's or a record's JSON payload as a batch holds it until the store commits it: a
//! `serde_json::Value` tree while it is built and read, or its compact text once the batch
//! keeps it ([`Payload::compact`]). A tree costs about a hundred bytes a field (a map node, the
//! key's own allocation, the value): a curve block of four points held as a message and a
//! record was 24 kB, its text 3 kB; the thousand blocks of an hour, or the thousand freezes
//! of a midnight, in one batch held tens of megabytes (docs/benchmarks.md (j)). The text is
//! read back into a tree only where someone looks (tests, the rare mark on a held reading);
//! the store serializes it without one. A clone of the text shares it (a kept message's record
//! is a clone of its payload).

use serde::{Serialize, Serializer};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, OnceLock};

/// A JSON value as a tree or as compact text (see the module documentation).
#[derive(Clone)]
pub struct Payload(Repr);

#[derive(Clone)]
enum Repr {
    Tree(Value),
    /// The compact text (a kept message and its record share it), and its tree once someone
    /// read it.
    Text(Arc<str>, OnceLock<Value>),
}

impl Payload {
    /// Turns the tree into its compact text (no-op when already text).
    pub fn compact(&mut self) {
        if let Repr::Tree(v) = &self.0 {
            let text: Arc<str> = v.to_string().into();
            self.0 = Repr::Text(text, OnceLock::new());
        }
    }

    /// The payload as compact JSON text.
    pub fn text(&self) -> Cow<'_, str> {
        match &self.0 {
            Repr::Tree(v) => Cow::Owned(v.to_string()),
            Repr::Text(t, _) => Cow::Borrowed(t),
        }
    }

    /// The payload as a tree, parsed for the caller alone when held as text (nothing kept).
    pub fn tree(&self) -> Cow<'_, Value> {
        match &self.0 {
            Repr::Tree(v) => Cow::Borrowed(v),
            Repr::Text(t, cached) => match cached.get() {
                Some(v) => Cow::Borrowed(v),
                None => Cow::Owned(parse(t)),
            },
        }
    }

    /// The tree, taking it out of the payload.
    pub fn into_value(self) -> Value {
        match self.0 {
            Repr::Tree(v) => v,
            Repr::Text(t, cached) => cached.into_inner().unwrap_or_else(|| parse(&t)),
        }
    }
}

/// The text was written from a `Value`: it reads back.
fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("a payload's text is the JSON of a value")
}

impl From<Value> for Payload {
    fn from(v: Value) -> Payload {
        Payload(Repr::Tree(v))
    }
}

impl Default for Payload {
    fn default() -> Payload {
        Payload(Repr::Tree(Value::Null))
    }
}

impl Deref for Payload {
    type Target = Value;
    fn deref(&self) -> &Value {
        match &self.0 {
            Repr::Tree(v) => v,
            Repr::Text(t, cached) => cached.get_or_init(|| parse(t)),
        }
    }
}

impl DerefMut for Payload {
    fn deref_mut(&mut self) -> &mut Value {
        if let Repr::Text(..) = &self.0 {
            let v = std::mem::take(self).into_value();
            self.0 = Repr::Tree(v);
        }
        match &mut self.0 {
            Repr::Tree(v) => v,
            Repr::Text(..) => unreachable!("turned into a tree above"),
        }
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        **self == **other
    }
}

impl PartialEq<Value> for Payload {
    fn eq(&self, other: &Value) -> bool {
        **self == *other
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Tree(v) => fmt::Display::fmt(v, f),
            Repr::Text(t, _) => f.write_str(t),
        }
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.tree().serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_and_tree_are_the_same_value() {
        let v = json!({"meter": "m1", "points": [{"kwh": 1.5, "ts": "2026-11-30T08:00:00.000Z"}], "n": null});
        let mut p = Payload::from(v.clone());
        let before = p.to_string();
        p.compact();
        assert_eq!(p.text(), before);
        assert_eq!(p.to_string(), before);
        assert_eq!(*p.tree(), v);
        assert_eq!(p, v);
        assert_eq!(p["points"][0]["kwh"], 1.5);
        assert_eq!(serde_json::to_value(&p).unwrap(), v);
        // A change turns it back into a tree.
        p["n"] = json!(7);
        assert_eq!(p.into_value()["n"], 7);
    }
}
