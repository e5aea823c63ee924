//! What waits in memory while the store refuses commits (a full disk, a damaged file being
//! replaced): the writer's folds, oldest first, bounded.
//!
//! Nothing collected is dropped until the bound (counted in values, the size that grows) is
//! reached. Then the oldest readings lose their instantaneous values first (voltages,
//! currents, power: the present matters more than an hour-old voltage), energy registers last
//! (they carry the billing and the line loss); only when energy registers alone exceed the
//! bound are whole oldest readings dropped. Each drop is counted (and removed from the
//! reading's message too, so history and outbox stay the same). Shedding goes down to three
//! quarters of the bound, so it happens in rounds, not at every step.

use super::Fold;
use crate::clock::rfc3339_ms;
use crate::model::Reading;
use crate::store::Message;
use std::collections::VecDeque;

/// The default bound on values held in memory (about 60 MB of readings and their messages).
pub const MAX_HELD_VALUES: usize = 400_000;

/// What shedding dropped so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shed {
    /// Instantaneous values (not energy registers) removed from held readings.
    pub instantaneous_values: u64,
    /// Whole readings dropped (energy registers included).
    pub readings: u64,
}

/// The folds waiting for the store, oldest first.
#[derive(Debug)]
pub struct Held {
    queue: VecDeque<Fold>,
    values: usize,
    max_values: usize,
    shed: Shed,
}

impl Held {
    /// An empty queue bounded at `max_values` values.
    pub fn new(max_values: usize) -> Held {
        Held {
            queue: VecDeque::new(),
            values: 0,
            max_values: max_values.max(1),
            shed: Shed::default(),
        }
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Readings waiting.
    pub fn readings(&self) -> usize {
        self.queue.iter().map(|f| f.batch.readings.len()).sum()
    }

    /// Values waiting (the bounded figure).
    pub fn values(&self) -> usize {
        self.values
    }

    /// What shedding dropped since the queue was made.
    pub fn shed(&self) -> Shed {
        self.shed
    }

    /// Adds a fold at the back; sheds when over the bound. Returns what this call shed.
    pub fn push(&mut self, fold: Fold) -> Shed {
        self.values += values_of(&fold);
        self.queue.push_back(fold);
        self.enforce_bound()
    }

    /// Puts a fold back at the front (the store refused it again).
    pub fn push_front(&mut self, fold: Fold) {
        self.values += values_of(&fold);
        self.queue.push_front(fold);
    }

    /// Takes the oldest folds, merged, up to about `max_readings` readings (at least one fold):
    /// a long backlog is stored in transactions of a sane size, not one that needs as much
    /// free space as the whole backlog.
    pub fn take_front(&mut self, max_readings: usize) -> Option<Fold> {
        let mut out = self.queue.pop_front()?;
        while let Some(next) = self.queue.front() {
            if out.batch.readings.len() + next.batch.readings.len() > max_readings {
                break;
            }
            let next = self.queue.pop_front().expect("front exists");
            out.batch.append(next.batch);
            out.learned.extend(next.learned);
        }
        self.values -= values_of(&out);
        Some(out)
    }

    fn enforce_bound(&mut self) -> Shed {
        let mut now = Shed::default();
        if self.values <= self.max_values {
            return now;
        }
        let target = self.max_values / 4 * 3;
        // Instantaneous values first, oldest first.
        'strip: for fold in self.queue.iter_mut() {
            let batch = &mut fold.batch;
            for i in 0..batch.readings.len() {
                if self.values <= target {
                    break 'strip;
                }
                let before = batch.readings[i].values.len();
                batch.readings[i].values.retain(|k, _| is_energy(k));
                let removed = before - batch.readings[i].values.len();
                if removed > 0 {
                    strip_message(&mut batch.messages, &batch.readings[i]);
                    self.values -= removed;
                    now.instantaneous_values += removed as u64;
                }
            }
        }
        // Then whole readings, oldest first.
        'drop: for fold in self.queue.iter_mut() {
            let batch = &mut fold.batch;
            while !batch.readings.is_empty() {
                if self.values <= target {
                    break 'drop;
                }
                let r = batch.readings.remove(0);
                if !batch.reading_quality.is_empty() {
                    batch.reading_quality.remove(0);
                }
                drop_message(&mut batch.messages, &r);
                self.values -= r.values.len().max(1);
                now.readings += 1;
            }
        }
        self.shed.instantaneous_values += now.instantaneous_values;
        self.shed.readings += now.readings;
        now
    }
}

/// Energy registers (`energy_*`) are kept longest.
fn is_energy(quantity: &str) -> bool {
    quantity.starts_with("energy_")
}

/// Values a fold holds (a reading with no values counts as one).
fn values_of(fold: &Fold) -> usize {
    fold.batch
        .readings
        .iter()
        .map(|r| r.values.len().max(1))
        .sum()
}

/// True when `m` is the reading message of `r`.
fn is_message_of(m: &Message, r: &Reading) -> bool {
    if !m.topic.ends_with(&format!("/reading/{}", r.meter)) {
        return false;
    }
    // Held as compact text: read into a tree for the check alone, nothing kept.
    let payload = m.payload.tree();
    payload.get("values").is_some()
        && payload.get("meter").and_then(|v| v.as_str()) == Some(r.meter.as_str())
        && payload.get("ts").and_then(|v| v.as_str()) == Some(rfc3339_ms(r.ts_ms).as_str())
}

/// Keeps in `r`'s message only the values `r` still has.
fn strip_message(messages: &mut [Message], r: &Reading) {
    if let Some(m) = messages.iter_mut().find(|m| is_message_of(m, r))
        && let Some(serde_json::Value::Object(values)) = m.payload.get_mut("values")
    {
        values.retain(|k, _| r.values.contains_key(k));
        m.payload.compact();
    }
}

/// Removes `r`'s message.
fn drop_message(messages: &mut Vec<Message>, r: &Reading) {
    if let Some(i) = messages.iter().position(|m| is_message_of(m, r)) {
        messages.remove(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Batch;
    use crate::uplink::contract::Topics;

    fn fold(ts_ms: i64) -> Fold {
        let topics = Topics::new("amr", "gw");
        let r = Reading {
            meter: "m1".into(),
            ts_ms,
            values: [
                ("energy_import_kwh".to_string(), ts_ms as f64),
                ("voltage_l1_v".to_string(), 230.0),
                ("current_l1_a".to_string(), 5.0),
            ]
            .into(),
        };
        Fold {
            batch: Batch {
                messages: vec![topics.reading_message(&r)],
                readings: vec![r],
                reading_quality: vec![0],
                ..Default::default()
            },
            learned: Vec::new(),
        }
    }

    #[test]
    fn instantaneous_values_go_first_energy_last_and_every_drop_is_counted() {
        let mut held = Held::new(30);
        let mut shed = Shed::default();
        for t in 0..10 {
            let s = held.push(fold(t));
            shed.instantaneous_values += s.instantaneous_values;
            shed.readings += s.readings;
        }
        assert_eq!(held.values(), 30, "at the bound, nothing shed yet");
        assert_eq!(shed, Shed::default());
        let s = held.push(fold(10));
        assert!(s.instantaneous_values > 0 && s.readings == 0, "{s:?}");
        assert!(held.values() <= 22);
        // The oldest reading lost its voltage and current, in history and message alike.
        let first = held.take_front(1).unwrap();
        assert_eq!(first.batch.readings[0].values.len(), 1);
        let values = first.batch.messages[0].payload["values"]
            .as_object()
            .unwrap();
        assert_eq!(values.keys().collect::<Vec<_>>(), ["energy_import_kwh"]);
        // Energy alone over the bound: whole oldest readings go, counted.
        let mut held = Held::new(4);
        for t in 0..8 {
            held.push(fold(t));
        }
        assert!(held.shed().readings > 0);
        assert!(held.values() <= 4);
        let rest = held.take_front(100).unwrap();
        assert_eq!(rest.batch.readings.len(), rest.batch.messages.len());
        assert_eq!(
            rest.batch.readings.last().unwrap().ts_ms,
            7,
            "the newest reading is kept"
        );
    }
}
